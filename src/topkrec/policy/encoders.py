"""State encoders s = f(user, history) (DESIGN §3).

All take the user embedding (B, d) and the history token embeddings (B, H, d) — item, plus event type
with feedback tokens — with a mask of real (non-pad) positions (B, H), oldest first and left-padded, and
return the state (B, hidden):

- ``concat``: the reference — [u ; h_1 ; … ; h_H] → Linear → ReLU (pad rows are zero embeddings);
- ``mean``: [u ; mean of the real history items] → Linear → ReLU;
- ``gru``: a GRU over the real history items (pads skipped), [u ; h_T] → Linear → ReLU;
- ``cfn``: the Chaos-Free Network of Laurent & von Brecht (ICLR 2017), the recurrent cell the paper
  uses (§3): h_t = θ_t ⊙ tanh(h_{t−1}) + η_t ⊙ tanh(W x_t), with input/forget gates
  θ_t = σ(U_θ h_{t−1} + V_θ x_t + b_θ), η_t = σ(U_η h_{t−1} + V_η x_t + b_η);
- ``attention``: causal self-attention over the tokens, SASRec-style (Kang & McAuley, ICDM 2018): learned
  positional embeddings (position H is the most recent token), pre-norm blocks of multi-head attention and a
  point-wise feed-forward layer, dropout; [u ; the output at the most recent position] → Linear → ReLU, or
  (``project=False``) the output at the most recent position itself, its final layer norm, as SASRec reads it
  (the state is then ``embed_dim`` wide and no user embedding can enter it).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from topkrec.policy.config import ENCODERS


class CFNCell(nn.Module):
    """One step of the Chaos-Free Network (Laurent & von Brecht 2017, eq. 1)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.gates = nn.Linear(input_size + hidden_size, 2 * hidden_size)  # [V x ; U h] for θ and η
        self.input_map = nn.Linear(input_size, hidden_size, bias=False)  # W
        with torch.no_grad():  # start close to "remember": forget-gate bias +1, input-gate bias −1
            self.gates.bias[:hidden_size].fill_(1.0)
            self.gates.bias[hidden_size:].fill_(-1.0)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        theta, eta = torch.sigmoid(self.gates(torch.cat([x, h], dim=-1))).chunk(2, dim=-1)
        return theta * torch.tanh(h) + eta * torch.tanh(self.input_map(x))


class CausalSelfAttention(nn.Module):
    """SASRec's sequence model over left-padded tokens: (B, H, d) with a real-token mask → (B, d) at position H."""

    causal: torch.Tensor  # (H, H) bool: key after query
    diagonal: torch.Tensor  # (H, H) bool identity

    def __init__(self, dim: int, hist_num: int, blocks: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.position = nn.Embedding(hist_num, dim)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, heads, dim_feedforward=dim, dropout=dropout, batch_first=True, norm_first=True
            )
            for _ in range(blocks)
        )
        self.norm = nn.LayerNorm(dim)
        self.input_dropout = nn.Dropout(dropout)
        self.scale = math.sqrt(dim)
        self.register_buffer("causal", torch.triu(torch.ones(hist_num, hist_num, dtype=torch.bool), 1), False)
        self.register_buffer("diagonal", torch.eye(hist_num, dtype=torch.bool), False)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.forward_all(tokens, mask)[:, -1]  # the most recent token; zeros without history
        return out

    def forward_all(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, d): the output after every position (causal; zeros at padding)."""
        h = tokens.shape[1]
        keep = mask[..., None].to(tokens.dtype)
        x = self.input_dropout(tokens * self.scale + self.position.weight[None, -h:]) * keep
        # A query sees earlier real tokens and itself, never padding nor the future. Every row keeps its
        # diagonal, so no query is fully masked (which would give NaN); pad positions are zeroed after each
        # block and never read by a real token.
        blocked = self.causal[None, -h:, -h:] | (~mask[:, None, :] & ~self.diagonal[None, -h:, -h:])
        attn_mask = blocked.repeat_interleave(self.heads, dim=0)  # (B * heads, H, H)
        for block in self.blocks:
            x = block(x, src_mask=attn_mask) * keep
        out: torch.Tensor = self.norm(x) * keep
        return out


class StateEncoder(nn.Module):
    """(user (B, d), history (B, H, d), mask (B, H)) → state (B, hidden)."""

    def __init__(
        self,
        kind: str,
        embed_dim: int,
        hist_num: int,
        hidden: int,
        attention_blocks: int = 2,
        attention_heads: int = 1,
        dropout: float = 0.0,
        project: bool = True,
    ) -> None:
        super().__init__()
        if kind not in ENCODERS:
            from topkrec.errors import TopkrecError

            raise TopkrecError(f"unknown encoder {kind!r}; use one of {', '.join(ENCODERS)}")
        self.kind = kind
        self.hidden = hidden
        self.cell: nn.Module | None = None
        self.attention: CausalSelfAttention | None = None
        self.dropout = nn.Dropout(dropout)
        if kind == "concat":
            in_dim = embed_dim * (hist_num + 1)
        elif kind == "mean":
            in_dim = 2 * embed_dim
        elif kind == "attention":
            self.attention = CausalSelfAttention(embed_dim, hist_num, attention_blocks, attention_heads, dropout)
            in_dim = 2 * embed_dim
        else:
            self.cell = nn.GRUCell(embed_dim, hidden) if kind == "gru" else CFNCell(embed_dim, hidden)
            in_dim = embed_dim + hidden
        # attention without projection: the state is the sequence model's own output
        self.direct = kind == "attention" and not project
        self.out = None if self.direct else nn.Linear(in_dim, hidden)
        self.state_dim = embed_dim if self.direct else hidden

    @property
    def sequential(self) -> bool:
        """Whether ``forward_all`` gives the state after every position in one pass (all but ``concat``)."""
        return self.kind != "concat"

    def forward_all(self, user: torch.Tensor, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, hidden): the state after each position of left-padded windows (B, L, d), in one pass — what
        ``forward`` gives for the window ending there (causal; positions before the first real token are
        the empty history's state). Training on whole windows (``TrainConfig.batching``) uses it."""
        b, length = history.shape[:2]
        m = mask.to(history.dtype)[..., None]
        if self.kind == "mean":
            seen = torch.cumsum(m, 1)
            per_position = torch.cumsum(history * m, 1) / seen.clamp_min(1.0)
        elif self.attention is not None:
            per_position = self.attention.forward_all(history, mask)
        elif self.cell is not None:
            history = self.dropout(history)
            h = history.new_zeros(b, self.hidden)
            states = []
            for t in range(length):
                h = torch.where(mask[:, t, None], self.cell(history[:, t], h), h)
                states.append(h)
            per_position = self.dropout(torch.stack(states, 1))
        else:
            raise ValueError(f"the {self.kind} encoder has no per-position states; train it on rows")
        if self.out is None:
            return per_position
        features = torch.cat([user[:, None, :].expand(b, length, -1), per_position], dim=2)
        state: torch.Tensor = torch.relu(self.out(features))
        return state

    def forward(self, user: torch.Tensor, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b = user.shape[0]
        if self.kind == "concat":
            features = torch.cat([user, history.reshape(b, -1)], dim=1)
        elif self.kind == "mean":
            m = mask.to(history.dtype)[..., None]
            mean = (history * m).sum(1) / m.sum(1).clamp_min(1.0)
            features = torch.cat([user, mean], dim=1)
        elif self.attention is not None:
            if self.out is None:
                direct: torch.Tensor = self.attention(history, mask)
                return direct
            features = torch.cat([user, self.attention(history, mask)], dim=1)
        else:
            assert self.cell is not None
            history = self.dropout(history)
            h = history.new_zeros(b, self.hidden)
            for t in range(history.shape[1]):  # H steps; pads keep the previous hidden state
                step = self.cell(history[:, t], h)
                h = torch.where(mask[:, t, None], step, h)
            features = torch.cat([user, self.dropout(h)], dim=1)
        assert self.out is not None
        state = torch.relu(self.out(features))
        assert state.shape == (b, self.hidden)
        return state
