"""DTW as a structured-prediction layer: a synthetic analogue of supervised audio-to-score
alignment (the paper's Bach10 experiment, reconstructed; no audio data here).

A *score* is a sequence of K note events, each a pitch among P. Its *performance* is a sequence
of frames: note k lasts a random number of frames (a global tempo times a per-note warp), and
every frame is the pitch's spectral template (shared by all pieces: the "instrument") times a
random gain, plus Gaussian noise. The truth is the monotone map frame -> note.

A per-frame linear model f(x_t) in R^P scores frame t against note k by theta[t, k] =
f(x_t)[pitch_k], and the alignment is read off with hard DTW on theta. Two ways to train f:

- *structured*: the loss DTW_Omega(theta) - <theta, Y> with Y the true alignment (a structured
  hinge / CRF-like loss; its gradient is E_Omega - Y, the predicted minus the true alignment),
  with negentropy or squared l2;
- *baseline*: per-frame cross-entropy on the frame's true pitch (a per-frame classifier), then
  hard DTW on the log-probabilities theta[t, k] = log p(pitch_k | x_t).

The score is the mean absolute onset error, in frames, of each note (first frame aligned to it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lib.chapters.differentiable_dp import smooth_dp as sd


@dataclass
class Piece:
    """One score and its performance: frames (T, dim), pitches of the notes (K,), and the note
    of every frame (T,), non-decreasing from 0 to K - 1."""

    frames: Tensor
    pitches: Tensor
    note_of_frame: Tensor

    def alignment(self) -> Tensor:
        """True alignment matrix Y (T, K): Y[t, k] = 1 when frame t plays note k."""
        y = torch.zeros(len(self.note_of_frame), len(self.pitches), dtype=self.frames.dtype)
        y[torch.arange(len(self.note_of_frame)), self.note_of_frame] = 1.0
        return y


def templates(rng: np.random.Generator, n_pitches: int, dim: int) -> Tensor:
    """Spectral templates (P, dim) of the instrument, unit norm."""
    t = rng.normal(size=(n_pitches, dim))
    return torch.as_tensor(t / np.linalg.norm(t, axis=1, keepdims=True))


def make_piece(
    rng: np.random.Generator,
    temps: Tensor,
    n_notes: int,
    mean_dur: float,
    noise: float,
) -> Piece:
    """One random score of n_notes notes (no pitch repeated twice in a row) and its performance:
    tempo exp(N(0, 0.3^2)) for the piece, duration warp exp(N(0, 0.5^2)) per note, gain U(0.5,
    1.5) per frame, noise N(0, noise^2) per coordinate."""
    n_pitches = temps.shape[0]
    pitches = [int(rng.integers(n_pitches))]
    for _ in range(n_notes - 1):
        pitches.append(int((pitches[-1] + rng.integers(1, n_pitches)) % n_pitches))
    tempo = np.exp(rng.normal(0.0, 0.3))
    durs = np.maximum(1, np.round(mean_dur * tempo * np.exp(rng.normal(0.0, 0.5, n_notes))))
    note_of_frame = np.repeat(np.arange(n_notes), durs.astype(int))
    gain = rng.uniform(0.5, 1.5, size=(len(note_of_frame), 1))
    frames = gain * temps.numpy()[np.asarray(pitches)[note_of_frame]]
    frames = frames + noise * rng.normal(size=frames.shape)
    return Piece(torch.as_tensor(frames), torch.tensor(pitches), torch.as_tensor(note_of_frame))


def make_pieces(rng, temps: Tensor, count: int, n_notes: int, mean_dur: float, noise: float):
    """A list of random pieces (see :func:`make_piece`)."""
    return [make_piece(rng, temps, n_notes, mean_dur, noise) for _ in range(count)]


def scores(model: torch.nn.Module, piece: Piece, log_probs: bool) -> Tensor:
    """theta (T, K): the model's score of every frame against every note of the score."""
    out = model(piece.frames)
    if log_probs:
        out = torch.log_softmax(out, -1)
    return out[:, piece.pitches]


def path_onsets(theta: Tensor) -> np.ndarray:
    """Onset (first frame) of every note (K,) on the hard DTW path of theta (T, K)."""
    _, path = sd.dtw_value_and_grad(theta.detach()[None], 1.0, "hard")
    return np.argmax(path[0].numpy() > 0, axis=0)


def true_onsets(piece: Piece) -> np.ndarray:
    """Onset (first frame) of every note (K,) in the performance."""
    return np.searchsorted(piece.note_of_frame.numpy(), np.arange(len(piece.pitches)))


def uniform_error(pieces: list[Piece]) -> np.ndarray:
    """Per piece: the mean onset error of the uniform-tempo guess (notes of equal length, the
    length of the performance known), the null that a trained model must beat."""
    out = []
    for p in pieces:
        t_len, k = len(p.note_of_frame), len(p.pitches)
        guess = np.floor(np.arange(k) * t_len / k)
        out.append(np.abs(guess - true_onsets(p)).mean())
    return np.array(out)


def evaluate(model, pieces: list[Piece], log_probs: bool) -> np.ndarray:
    """Per test piece: onset error (frames) of hard DTW on the model's scores."""
    with torch.no_grad():
        return np.array(
            [
                np.abs(path_onsets(scores(model, p, log_probs)) - true_onsets(p)).mean()
                for p in pieces
            ]
        )


def train(
    kind: str,
    train_pieces: list[Piece],
    n_pitches: int,
    epochs: int,
    lr: float,
    gamma: float,
    seed: int,
) -> torch.nn.Module:
    """Train a linear per-frame model: kind 'baseline' (per-frame cross-entropy) or 'entropy' /
    'l2' (the structured loss DTW_Omega(theta) - <theta, Y>, per frame). One piece per step."""
    gen = torch.Generator().manual_seed(seed)
    dim = train_pieces[0].frames.shape[1]
    model = torch.nn.Linear(dim, n_pitches).double()
    with torch.no_grad():
        bound = 1 / dim**0.5
        model.weight.uniform_(-bound, bound, generator=gen)
        model.bias.zero_()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    aligns = [p.alignment() for p in train_pieces]
    for _ in range(epochs):
        for i in torch.randperm(len(train_pieces), generator=gen).tolist():
            p = train_pieces[i]
            if kind == "baseline":
                loss = torch.nn.functional.cross_entropy(
                    model(p.frames), p.pitches[p.note_of_frame]
                )
            else:
                theta = scores(model, p, False)
                loss = (sd.dtw(theta, gamma, kind) - (theta * aligns[i]).sum()) / len(theta)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


KINDS = ("baseline", "entropy", "l2")


def study(
    seed: int,
    repeats: int,
    n_train: int,
    n_test: int,
    n_notes: int,
    n_pitches: int,
    dim: int,
    mean_dur: float,
    noise: float,
    epochs: int,
    lr: float,
    gamma: float,
) -> dict:
    """Per seed r (seed + r: training pieces and initialisation) and kind: the per-test-piece onset
    errors (repeats x n_test), on one test set (drawn from ``seed``) shared by all, so that kinds
    are paired on pieces and seed index; also the uniform-tempo null and the training times."""
    rng = np.random.default_rng(seed)
    temps = templates(rng, n_pitches, dim)
    test = make_pieces(rng, temps, n_test, n_notes, mean_dur, noise)
    errors = {k: [] for k in KINDS}
    seconds = {k: [] for k in KINDS}
    for r in range(repeats):
        rng_r = np.random.default_rng([seed, r, 1])
        train_p = make_pieces(rng_r, temps, n_train, n_notes, mean_dur, noise)
        for kind in KINDS:
            t0 = time.perf_counter()
            model = train(kind, train_p, n_pitches, epochs, lr, gamma, seed + r)
            seconds[kind].append(time.perf_counter() - t0)
            errors[kind].append(evaluate(model, test, kind == "baseline"))
    return {
        "errors": {k: np.stack(v) for k, v in errors.items()},
        "seconds": {k: float(np.mean(v)) for k, v in seconds.items()},
        "null": uniform_error(test),
        "test": test,
        "frames": float(np.mean([len(p.note_of_frame) for p in test])),
    }
