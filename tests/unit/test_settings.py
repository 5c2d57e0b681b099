"""Settings read from the environment: the card cache's size, where the writer runs."""

from __future__ import annotations

import pytest

from api.settings import DEFAULT_CARD_CACHE_SIZE, Settings


def test_the_card_cache_size_comes_from_the_environment_or_its_default():
    assert Settings.from_env({}).card_cache_size == DEFAULT_CARD_CACHE_SIZE
    assert Settings.from_env({"GIFTLEDGER_CARD_CACHE_SIZE": "250000"}).card_cache_size == 250_000


@pytest.mark.parametrize("size", ["0", "-5"])
def test_a_card_cache_smaller_than_one_card_is_refused(size):
    with pytest.raises(ValueError, match="GIFTLEDGER_CARD_CACHE_SIZE"):
        Settings.from_env({"GIFTLEDGER_CARD_CACHE_SIZE": size})


def test_the_writer_is_a_process_unless_told_to_be_a_thread():
    assert Settings.from_env({}).writer_mode == "process"
    assert Settings.from_env({"GIFTLEDGER_WRITER": "Thread"}).writer_mode == "thread"


def test_an_unknown_writer_mode_is_refused():
    with pytest.raises(ValueError, match="GIFTLEDGER_WRITER"):
        Settings.from_env({"GIFTLEDGER_WRITER": "fiber"})
