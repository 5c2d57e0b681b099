"""GiftStream's generated card identifiers: the right length and alphabet, and uniform."""

from __future__ import annotations

from collections import Counter

from api.giftstream import GENERATED_ID_ALPHABET, GENERATED_ID_LENGTH, generated_identifier

DRAWS = 2_000


def test_identifiers_have_the_length_and_alphabet_and_do_not_repeat():
    drawn = [generated_identifier() for _ in range(DRAWS)]

    assert all(len(identifier) == GENERATED_ID_LENGTH for identifier in drawn)
    assert set("".join(drawn)) <= set(GENERATED_ID_ALPHABET)
    assert len(set(drawn)) == DRAWS


def test_every_character_of_the_alphabet_is_drawn_about_equally_often_at_every_position():
    drawn = [generated_identifier() for _ in range(DRAWS)]
    expected = DRAWS * GENERATED_ID_LENGTH / len(GENERATED_ID_ALPHABET)  # About 1,032.
    counts = Counter("".join(drawn))
    # Binomial, standard deviation about 32: half or double the mean would be a broken draw.
    assert all(expected / 2 < counts[c] < expected * 2 for c in GENERATED_ID_ALPHABET), counts
    for position in (0, GENERATED_ID_LENGTH // 2, GENERATED_ID_LENGTH - 1):
        assert len({identifier[position] for identifier in drawn}) == len(GENERATED_ID_ALPHABET)
