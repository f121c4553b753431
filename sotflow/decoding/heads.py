"""The seam for trained draft heads (Medusa, Cerberus): not implemented yet.

A draft head looks at the last hidden state and proposes several continuations of the
current token. Nothing else in the decoder needs to change to use one: proposals are
merged into the verification tree (``verify.build_tree``) next to prompt-lookup and
lookahead candidates, and greedy acceptance keeps the output exact. What a head needs
is (a) the last hidden state of the accepted path, which ``DecoderModel.forward`` can
return alongside the logits, and (b) weights trained by self-distillation.

A Cerberus-style entropy gate fits here too: ``propose`` returns nothing when the
next-token distribution is too uncertain for a tree to pay off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

__all__ = ["DraftHeads"]


class DraftHeads(Protocol):
    def propose(
        self,
        hidden: torch.Tensor,  # [C] hidden state after the current token
        current: int,
        max_nodes: int,
    ) -> Sequence[Sequence[int]]:
        """Candidate continuations after ``current``, best first."""
        ...
