"""Fixed windows over the token stream, served in a seeded order, resumable from a small JSON state.

Windowing: the split's documents, each ended by EOS, form one stream t[0..T). Window w covers
t[w·S : w·S + S + 1]; inputs = its first S tokens, targets = its last S (shifted by one), so consecutive
windows share one boundary token and every stream token is a target exactly once per epoch. W = (T-1)//S.

Order: global position p (windows consumed by all processes so far) maps to epoch e = p // W and window
perm_e[p % W], perm_e = numpy default_rng([seed, e]).permutation(W). A global batch of size G starting at p
is positions [p, p+G); process i of n takes [p + i·G/n, p + (i+1)·G/n) and reads only those windows.
The state is just p (plus identity checks), so resuming — even with a new batch size — is exact.
"""

from __future__ import annotations

import numpy as np

from moe_jax.errors import UserError

STATE_VERSION = 1


class WindowIterator:
    """Serves this process's share of each global batch; `get_state`/`set_state` resume exactly."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, fingerprint: str,
                 process_index: int = 0, process_count: int = 1):
        if not 0 <= process_index < process_count:
            raise UserError(f"process_index={process_index} must be in [0, process_count={process_count})")
        self._tokens = tokens  # [T] uint16/int32, memory-mapped
        self.seq_len = seq_len
        self.seed = seed
        self.fingerprint = fingerprint
        self.process_index, self.process_count = process_index, process_count
        self.num_windows = (tokens.size - 1) // seq_len
        if self.num_windows < 1:
            raise UserError(f"split has {tokens.size} tokens, fewer than seq_len+1={seq_len + 1}: lower data.seq_len")
        self.position = 0  # global windows consumed
        self._perms: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
        return self._perms[epoch]

    def window_ids(self, positions: np.ndarray) -> np.ndarray:
        """Window index of each global position [b] → [b]."""
        epochs, offsets = np.divmod(positions, self.num_windows)
        out = np.empty_like(positions)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self._permutation(int(epoch))[offsets[sel]]
        return out

    def windows(self, window_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Batch dict for windows [b]: inputs/targets [b, S] int32, weights [b, S] float32."""
        starts = window_ids.astype(np.int64) * self.seq_len
        chunk = self._tokens[starts[:, None] + np.arange(self.seq_len + 1)].astype(np.int32)  # [b, S+1]
        return dict(inputs=chunk[:, :-1], targets=chunk[:, 1:],
                    weights=np.ones((len(window_ids), self.seq_len), np.float32))

    def next_batch(self, global_batch_size: int) -> dict[str, np.ndarray]:
        """This process's [global_batch_size // process_count, S] share of the next global batch."""
        if not isinstance(global_batch_size, (int, np.integer)) or global_batch_size < 1:
            raise UserError(f"global_batch_size={global_batch_size!r} must be a positive integer")
        if global_batch_size % self.process_count:
            raise UserError(f"global_batch_size={global_batch_size} is not divisible by "
                            f"process_count={self.process_count}")
        per_process = global_batch_size // self.process_count
        first = self.position + self.process_index * per_process
        batch = self.windows(self.window_ids(np.arange(first, first + per_process, dtype=np.int64)))
        self.position += int(global_batch_size)
        return batch

    @property
    def epoch(self) -> int:
        return self.position // self.num_windows

    def get_state(self) -> dict:
        """Small JSON-serialisable position (same on every process)."""
        return dict(version=STATE_VERSION, position=self.position, epoch=self.epoch, seed=self.seed,
                    seq_len=self.seq_len, num_windows=self.num_windows, fingerprint=self.fingerprint)

    def set_state(self, state: dict) -> None:
        """Resume at a saved position; refuses a state saved for other data, seed or window length."""
        try:
            position = int(state["position"])
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"data iterator state {state!r} has no integer 'position'") from err
        for key in ("seed", "seq_len", "num_windows", "fingerprint"):
            if key in state and state[key] != getattr(self, key):
                raise UserError(f"data iterator state was saved with {key}={state[key]!r} but this iterator has "
                                f"{getattr(self, key)!r}; restore with the same data config and token cache")
        if position < 0:
            raise UserError(f"data iterator state position={position} must be >= 0")
        self.position = position

    def __iter__(self):
        raise TypeError("call next_batch(global_batch_size): the batch size can change between calls")


def make_train_iterator(data_cfg, split: str = "train", process_index: int = 0,
                        process_count: int = 1) -> WindowIterator:
    """Seeded, resumable iterator over `split` windows of length data_cfg.seq_len (see module doc)."""
    from moe_jax.data.token_cache import load_tokens  # noqa: PLC0415

    tokens, manifest = load_tokens(data_cfg, split)
    return WindowIterator(tokens, data_cfg.seq_len, data_cfg.seed, manifest["fingerprint"],
                          process_index, process_count)


def make_eval_batches(data_cfg, batch_size: int, num_batches: int, process_index: int = 0,
                      process_count: int = 1) -> list[dict[str, np.ndarray]]:
    """Held-out windows spread evenly over the split, the same every call; `batch_size` is this process's share.

    The n = num_batches·G requested windows (G = batch_size·process_count) are windows k·⌊W/n⌋ of the
    split's W, so a small eval still samples every part of the held-out text rather than its first few
    documents. Global eval batch j holds requested windows [j·G, (j+1)·G); process i gets the i-th slice of
    it. If the split has fewer windows than requested, windows repeat cyclically.
    """
    from moe_jax.data.token_cache import load_tokens  # noqa: PLC0415

    if batch_size < 1 or num_batches < 1:
        raise UserError(f"eval batch_size={batch_size} and num_batches={num_batches} must be positive")
    tokens, manifest = load_tokens(data_cfg, "heldout")
    it = WindowIterator(tokens, data_cfg.seq_len, data_cfg.seed, manifest["fingerprint"], process_index,
                        process_count)
    requested = batch_size * process_count * num_batches
    stride = max(1, it.num_windows // requested)
    global_ids = (np.arange(requested, dtype=np.int64) * stride) % it.num_windows
    mine = global_ids.reshape(num_batches, process_count, batch_size)[:, process_index]  # [num_batches, b]
    return [it.windows(chunk) for chunk in mine]
