"""Settings read from the environment: the card cache's size."""

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
