"""Business outcomes as typed exceptions, each with a stable code clients can switch on."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_AMOUNT = "invalid_amount"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    UNSUPPORTED_OPERATION = "unsupported_operation"
    CARD_NOT_FOUND = "card_not_found"
    CARD_EXISTS = "card_exists"
    CARD_EXPIRED = "card_expired"
    CARD_BLOCKED = "card_blocked"
    CARD_NOT_BLOCKED = "card_not_blocked"
    REDEEM_NOT_ALLOWED = "redeem_not_allowed"
    LOAD_NOT_ALLOWED = "load_not_allowed"
    WRONG_LOCATION = "wrong_location"
    HOLD_NOT_FOUND = "hold_not_found"
    TOO_MANY_HOLDS = "too_many_holds"
    CAPTURE_EXCEEDS_HOLD = "capture_exceeds_hold"
    REFUND_EXCEEDS_SPENT = "refund_exceeds_spent"
    BALANCE_LIMIT = "balance_limit_exceeded"
    UNKNOWN_CURRENCY = "unknown_currency"
    INVALID_CARD_NUMBER = "invalid_card_number"


class LedgerError(Exception):
    """Base of every business refusal. A refused command records no event."""

    code: ErrorCode

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidAmount(LedgerError):
    code = ErrorCode.INVALID_AMOUNT


class InsufficientFunds(LedgerError):
    code = ErrorCode.INSUFFICIENT_FUNDS


class ReservationNotSupported(LedgerError):
    code = ErrorCode.UNSUPPORTED_OPERATION


class CardNotFound(LedgerError):
    code = ErrorCode.CARD_NOT_FOUND


class CardAlreadyExists(LedgerError):
    code = ErrorCode.CARD_EXISTS


class CardExpired(LedgerError):
    code = ErrorCode.CARD_EXPIRED


class CardBlocked(LedgerError):
    code = ErrorCode.CARD_BLOCKED


class CardNotBlocked(LedgerError):
    code = ErrorCode.CARD_NOT_BLOCKED


class RedeemNotAllowed(LedgerError):
    code = ErrorCode.REDEEM_NOT_ALLOWED


class LoadNotAllowed(LedgerError):
    code = ErrorCode.LOAD_NOT_ALLOWED


class WrongLocation(LedgerError):
    code = ErrorCode.WRONG_LOCATION


class HoldNotFound(LedgerError):
    code = ErrorCode.HOLD_NOT_FOUND


class TooManyHolds(LedgerError):
    code = ErrorCode.TOO_MANY_HOLDS


class CaptureExceedsHold(LedgerError):
    code = ErrorCode.CAPTURE_EXCEEDS_HOLD


class RefundExceedsSpent(LedgerError):
    code = ErrorCode.REFUND_EXCEEDS_SPENT


class BalanceLimitExceeded(LedgerError):
    code = ErrorCode.BALANCE_LIMIT


class UnknownCurrency(LedgerError):
    code = ErrorCode.UNKNOWN_CURRENCY


class InvalidCardNumber(LedgerError):
    code = ErrorCode.INVALID_CARD_NUMBER
