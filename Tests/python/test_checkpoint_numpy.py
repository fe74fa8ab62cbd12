"""An independent numpy reading of a Bard checkpoint: trains tiny models with
the built `bard`, re-computes `bard eval`'s loss here and compares (1e-4 abs),
and verifies the whole-file sha256 as README's Checkpoints section defines it.

BARD_BIN names the binary (default .build/release/bard). Without one the
end-to-end tests skip, unless CI is set, where they fail."""
import hashlib, json, math, os, random, shutil, struct, subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2]
BARD = Path(os.environ.get("BARD_BIN") or ROOT / ".build" / "release" / "bard")
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
TRAIN = ["--embed", "12", "--hidden", "16", "--dropout", "0.1", "--batch", "4", "--bptt", "8",
         "--steps", "30", "--seed", "3", "--optimizer", "adam", "--lr", "0.01"]
CELLS = {
    "lstm2": ["--cell", "lstm", "--layers", "2"],
    "gru1": ["--cell", "gru", "--layers", "1"],
    "rnn_tanh1": ["--cell", "rnn", "--activation", "tanh", "--layers", "1"],
}


# ---- the model, in numpy (float64), PyTorch's equations and gate order ----
def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    i, f, g, o = np.split(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c), c


def gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
    xr, xz, xn = np.split(x @ w_ih.T + b_ih, 3, axis=-1)
    hr, hz, hn = np.split(h @ w_hh.T + b_hh, 3, axis=-1)
    r, z = sigmoid(xr + hr), sigmoid(xz + hz)
    n = np.tanh(xn + r * hn)
    return (1.0 - z) * n + z * h


def rnn_step(x, h, w_ih, w_hh, b_ih, b_hh, activation="tanh"):
    a = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    return sigmoid(a) if activation == "sigmoid" else np.tanh(a)


def initial_state(cfg, batch):
    h = np.zeros((cfg["layers"], batch, cfg["hidden"]))
    if cfg.get("initialState", "zeros") == "book":
        h[:, :, 0] = 1.0
    return h, h.copy()  # c starts like h ("book": unit 0 is 1.0)


def forward(p, cfg, inputs):
    """inputs (T, B) token ids -> logits (T, B, V), state carried over T."""
    h, c = initial_state(cfg, inputs.shape[1])
    emb = p["embedding.weight"][inputs]
    tops = []
    for x in emb:
        for k in range(cfg["layers"]):
            w = [p[f"rnn.{n}_l{k}"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            if cfg["cell"] == "lstm":
                h[k], c[k] = lstm_step(x, h[k], c[k], *w)
            elif cfg["cell"] == "gru":
                h[k] = gru_step(x, h[k], *w)
            else:
                h[k] = rnn_step(x, h[k], *w, activation=cfg.get("activation", "tanh"))
            x = h[k]
        tops.append(x.copy())
    logits = np.stack(tops) @ p["decoder.weight"].T
    return logits + p["decoder.bias"] if cfg["outputBias"] else logits


def cross_entropy(logits, targets):
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(-np.take_along_axis(logp, targets[..., None], axis=-1).mean())


def load_checkpoint(path):
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
    assert meta["format"] == "bard-1"
    vocab, cfg = json.loads(meta["vocabulary"]), json.loads(meta["config"])
    params = {k: v.astype(np.float64) for k, v in load_file(str(path)).items()}
    return params, vocab, cfg


def numpy_eval(path, corpus, batch, split):
    p, vocab, cfg = load_checkpoint(path)
    stoi = {ch: i for i, ch in enumerate(vocab)}
    tokens = np.array([stoi[ch] for ch in corpus.read_bytes().decode("utf-8")])
    if split == "val":
        tokens = tokens[int(len(tokens) * (1 - float(cfg["valFraction"]))):]
    nb = len(tokens) // batch
    cols = tokens[: nb * batch].reshape(batch, nb).T
    return cross_entropy(forward(p, cfg, cols[:-1]), cols[1:]), batch * (nb - 1)


# ---- unit checks of the steps against hand computations ----
def test_steps_by_hand():
    x, h, c = np.zeros((1, 2)), np.zeros((1, 1)), np.ones((1, 1))
    w_ih, w_hh = np.zeros((4, 2)), np.zeros((4, 1))
    h1, c1 = lstm_step(x, h, c, w_ih, w_hh, np.zeros(4), np.zeros(4))
    assert np.allclose([c1[0, 0], h1[0, 0]], [0.5, 0.5 * math.tanh(0.5)])
    # gate order i, f, g, o: forget closed, input and output open, g = tanh(0.7)
    h1, c1 = lstm_step(x, h, c, w_ih, w_hh, np.array([60.0, -60.0, 0.7, 60.0]), np.zeros(4))
    assert np.allclose([c1[0, 0], h1[0, 0]], [math.tanh(0.7), math.tanh(math.tanh(0.7))])
    # gate order r, z, n; r multiplies only W_hn h + b_hn
    h = np.full((1, 1), 0.4)
    b_ih, b_hh = np.array([60.0, -60.0, 0.2]), np.array([0.0, 0.0, 0.3])
    assert np.isclose(gru_step(x, h, np.zeros((3, 2)), np.zeros((3, 1)), b_ih, b_hh), math.tanh(0.5))
    b_ih[0] = -60.0
    assert np.isclose(gru_step(x, h, np.zeros((3, 2)), np.zeros((3, 1)), b_ih, b_hh), math.tanh(0.2))
    b_ih[1] = 60.0
    assert np.isclose(gru_step(x, h, np.zeros((3, 2)), np.zeros((3, 1)), b_ih, b_hh), 0.4)
    x, w_ih, w_hh = np.array([[1.0, 2.0]]), np.array([[0.5, -0.25]]), np.array([[2.0]])
    args = (x, h, w_ih, w_hh, np.array([0.1]), np.array([0.2]))
    assert np.isclose(rnn_step(*args), math.tanh(0.3 + 0.8))
    assert np.isclose(rnn_step(*args, activation="sigmoid"), 1 / (1 + math.exp(-1.1)))


# ---- end to end against the built binary ----
def bard():
    if not BARD.is_file():
        msg = f"bard binary not found at {BARD} (build it, or set BARD_BIN)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI is set, so this is a failure")
        pytest.skip(msg)
    return str(BARD)


def run(*args, expect_failure=False):
    r = subprocess.run([bard(), *map(str, args)], capture_output=True, text=True, timeout=600)
    if expect_failure:
        assert r.returncode != 0, f"bard {' '.join(map(str, args))} succeeded; it should have failed"
        return r.stderr
    assert r.returncode == 0, f"bard {' '.join(map(str, args))} failed:\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(1234)
    words = ("the king queen love night day sword crown death sweet lord lady speak hath "
             "thou thee heart blood fair café naïve élan and of to my his her").split()
    out, n = [], 0
    while n < 20000:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 10)))
        line = line.capitalize() + rng.choice([".", ",", "!", "?", " — ay."]) + "\n"
        out.append(line)
        n += len(line)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("".join(out), encoding="utf-8")
    return path


@pytest.fixture(scope="module", params=sorted(CELLS))
def checkpoint(request, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    run("train", "--data", corpus, "--out", out, *CELLS[request.param], *TRAIN)
    path = out / "model.safetensors"
    assert path.is_file(), f"train wrote no {path}"
    return request.param, path


@pytest.mark.parametrize("split", ["val", "all"])
def test_eval_matches_numpy(checkpoint, corpus, split):
    name, path = checkpoint
    p, vocab, cfg = load_checkpoint(path)
    flags = dict(zip(CELLS[name][::2], CELLS[name][1::2]))
    assert cfg["cell"] == flags["--cell"] and cfg["layers"] == int(flags["--layers"])
    assert all(len(ch) == 1 for ch in vocab) and vocab == sorted(vocab)
    G, H, E, V = GATES[cfg["cell"]], cfg["hidden"], cfg["embed"], len(vocab)
    assert p["embedding.weight"].shape == (V, E) and p["decoder.weight"].shape == (V, H)
    assert ("decoder.bias" in p) == bool(cfg["outputBias"])
    for k in range(cfg["layers"]):
        assert p[f"rnn.weight_ih_l{k}"].shape == (G * H, E if k == 0 else H)
        assert p[f"rnn.weight_hh_l{k}"].shape == (G * H, H)
        assert p[f"rnn.bias_ih_l{k}"].shape == p[f"rnn.bias_hh_l{k}"].shape == (G * H,)
    args = ["eval", "--checkpoint", path, "--data", corpus, "--batch", 5, "--json"]
    got = json.loads(run(*args, *(["--split", "all"] if split == "all" else [])).strip())
    want_loss, want_chars = numpy_eval(path, corpus, 5, split)
    assert got["chars"] == want_chars
    assert abs(got["loss"] - want_loss) < 1e-4, (got, want_loss)
    assert math.isclose(got["perplexity"], math.exp(got["loss"]), rel_tol=1e-4)


def test_safetensors_layout_by_hand(checkpoint):
    blob = checkpoint[1].read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    assert entries and header["__metadata__"]["format"] == "bard-1"
    for key, e in entries.items():
        assert e["dtype"] == "F32", key
        start, end = e["data_offsets"]
        assert end - start == 4 * math.prod(e["shape"]), key
    assert len(blob) - 8 - n == max(e["data_offsets"][1] for e in entries.values())


# ---- the whole-file checksum, computed here from its definition ----
CHECKSUM_KEY = "bard.file_sha256"


def checksum_field(blob):
    """(offset, value) of bard.file_sha256: the 64 bytes after the one `"bard.file_sha256":"` in the header (compact
    JSON, as Bard writes it)."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = blob[8 : 8 + n]
    value = json.loads(header.decode("utf-8"))["__metadata__"][CHECKSUM_KEY]
    assert len(value) == 64 and all(ch in "0123456789abcdef" for ch in value)
    marker = b'"' + CHECKSUM_KEY.encode() + b'":"'
    assert header.count(marker) == 1, "the checksum field must occur once"
    at = 8 + header.index(marker) + len(marker)
    assert blob[at : at + 64] == value.encode()
    return at, value


def masked_sha256(blob, at):
    """sha256 of the whole file with the 64 bytes at `at` (the checksum's own digits) hashed as '0's."""
    return hashlib.sha256(blob[:at] + b"0" * 64 + blob[at + 64 :]).hexdigest()


def test_every_file_carries_a_whole_file_sha256(checkpoint):
    out = checkpoint[1].parent
    files = sorted(out.glob("*.safetensors"))
    assert {p.name for p in files} >= {"model.safetensors", "training-state.safetensors"}
    for path in files:
        blob = path.read_bytes()
        at, value = checksum_field(blob)
        assert masked_sha256(blob, at) == value, path
        # Any edit outside the digits breaks it: the length prefix, a header byte, a data byte.
        (n,) = struct.unpack("<Q", blob[:8])
        for edit in (0, 8, at - 1, at + 65, 8 + n - 1, 8 + n, len(blob) - 1):
            edited = bytearray(blob)
            edited[edit] ^= 0x01
            assert masked_sha256(bytes(edited), at) != value, (path, edit)
        # The hash is only a metadata string to the safetensors package.
        with safe_open(str(path), "np") as f:
            assert CHECKSUM_KEY in f.metadata() and "bard.data_sha256" not in f.metadata()
        assert load_file(str(path))


def test_edited_learning_rate_refuses_to_resume(checkpoint, corpus, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(checkpoint[1].parent, out)
    state = out / "training-state.safetensors"
    blob = state.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    meta = json.loads(blob[8 : 8 + n].decode("utf-8"))["__metadata__"]
    old = f'"lr":"{meta["lr"]}"'.encode()
    assert blob.count(old) == 1
    new = f'"lr":"{"9" * len(meta["lr"])}"'.encode()
    state.write_bytes(blob.replace(old, new))
    err = run("train", "--resume", out, "--data", corpus, "--steps", 31, expect_failure=True)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "checksum mismatch" in lines[0] and str(state) in lines[0], err
