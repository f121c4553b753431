"""Jacobi decoding's guess: the model's own previous predictions for the next positions.

A block of guesses is run after the current token; each guess is replaced by the
model's argmax given the guesses before it, and the leading part that already agreed
is accepted (Santilli et al.; Kou et al., 2024). Here the guess is one candidate branch
of the verification tree; after a step, the predictions made along that branch beyond
the accepted tokens become the next guess. On models not trained for it this gains
little, which is why it is also a cheap baseline for lookahead.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["JacobiGuess"]


class JacobiGuess:
    def __init__(self, length: int, fill: Sequence[int] = ()) -> None:
        self.length = length
        self.guess: list[int] = list(fill)[:length]

    def candidate(self) -> list[int]:
        return list(self.guess)

    def update(self, branch_predictions: Sequence[int], accepted: int) -> None:
        """Shift past the ``accepted`` new tokens (the bonus token included).

        ``branch_predictions[d]`` is the model's argmax after the branch's first ``d+1``
        tokens, i.e. its guess for the token ``d+2`` places after the old current token.
        The new current token sits ``accepted`` places after the old one.
        """
        self.guess = list(branch_predictions[accepted - 1 :])[: self.length]
