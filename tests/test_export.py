"""``bitfleet export``: models trained here, compiled as C99 with gcc and run on the test split,
predict exactly what Python predicts; the npz arrays and their description reproduce the
scores in plain numpy."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from bitfleet.bitmlp import BitMLP
from bitfleet.datasets import load_dataset
from bitfleet.fixedpoint import FixedMLP
from bitfleet.frames import decode_frame
from bitfleet.modelfile import load_model
from tests.inprocess import in_process

DRIVER = r"""
#include <stdio.h>
#include "bitfleet_model.h"

/* Rows of BITFLEET_INPUTS bytes on stdin; per row: the class, then the scores. */
int main(void)
{
    uint8_t x[BITFLEET_INPUTS];
    int32_t scores[BITFLEET_CLASSES];
    int k;
    while (fread(x, 1, BITFLEET_INPUTS, stdin) == BITFLEET_INPUTS) {
        bitfleet_scores(x, scores);
        printf("%d", bitfleet_predict(x));
        for (k = 0; k < BITFLEET_CLASSES; ++k) {
            printf(" %ld", (long)scores[k]);
        }
        printf("\n");
    }
    return 0;
}
"""
STRICT = ["gcc", "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-O2"]
# (how bitfleet trains it, the model) for every kind of model export writes.
MODELS = {
    "binary": ["train", "--dataset", "digits", "--epochs", "2", "--weights", "binary"],
    "ternary": ["train", "--dataset", "digits", "--epochs", "2", "--weights", "ternary"],
    "int16": ["pretrain", "--dataset", "digits", "--epochs", "3", "--weight-bits", "16"],
    "int8": ["pretrain", "--dataset", "digits", "--epochs", "3", "--weight-bits", "8"],
}


def _bitfleet(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "bitfleet.server.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@functools.cache
def _m32() -> bool:
    """gcc can build and run 32-bit x86 programs here (Debian's gcc-multilib)."""
    probe = Path("/tmp") / "bitfleet-m32-probe"
    built = subprocess.run(
        ["gcc", "-m32", "-x", "c", "-o", str(probe), "-"],
        input="int main(void) { return 0; }",
        capture_output=True,
        text=True,
        check=False,
    )
    return built.returncode == 0 and subprocess.run([str(probe)], check=False).returncode == 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("models")
    paths = {}
    for kind, args in MODELS.items():
        path = directory / f"{kind}.bfm"
        done = _bitfleet(*args, "--out", str(path), "--json")
        assert done.returncode == 0, done.stderr[-2000:]
        paths[kind] = path
    return paths


@pytest.fixture(scope="module")
def test_split() -> NDArray[np.uint8]:
    return load_dataset("digits").x_test


def _compiled(source: Path, flags: list[str]) -> Path:
    (source / "driver.c").write_text(DRIVER)
    binary = source / f"predict{''.join(flags)}"
    files = [str(source / "bitfleet_model.c"), str(source / "driver.c")]
    done = subprocess.run([*STRICT, *flags, *files, "-o", str(binary)], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return binary


def _run(binary: Path, x: NDArray[np.uint8]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    done = subprocess.run([str(binary)], input=x.tobytes(), capture_output=True, check=True)
    rows = np.array([line.split() for line in done.stdout.decode().splitlines()], dtype=np.int64)
    return rows[:, 0], rows[:, 1:]


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("word_bits", [32, 64])
@pytest.mark.parametrize("flags", [[], ["-m32"]], ids=["native", "m32"])
def test_the_c_model_predicts_exactly_what_python_does(
    kind: str,
    word_bits: int,
    flags: list[str],
    trained: dict[str, Path],
    test_split: NDArray[np.uint8],
    tmp_path: Path,
) -> None:
    if flags and not _m32():
        pytest.skip("this gcc cannot build 32-bit programs (install gcc-multilib)")
    if kind.startswith("int") and word_bits == 64:
        pytest.skip("a fixed-point model has no packed words: --word-bits does not apply")
    out = tmp_path / "c"
    done = _bitfleet("export", str(trained[kind]), "--out", str(out), "--word-bits", str(word_bits))
    assert done.returncode == 0, done.stderr
    model, _ = load_model(trained[kind])
    assert isinstance(model, BitMLP | FixedMLP)
    predicted, scores = _run(_compiled(out, flags), test_split)
    assert len(predicted) == len(test_split) > 300
    assert np.array_equal(scores, model.scores(test_split))
    assert np.array_equal(predicted, model.predict(test_split))


def test_the_source_needs_nothing_but_stdint(trained: dict[str, Path], tmp_path: Path) -> None:
    for kind, path in trained.items():
        out = tmp_path / kind
        assert _bitfleet("export", str(path), "--out", str(out)).returncode == 0
        header = (out / "bitfleet_model.h").read_text()
        source = (out / "bitfleet_model.c").read_text()
        assert re.findall(r"#include\s*(\S+)", header) == ["<stdint.h>"]
        assert re.findall(r"#include\s*(\S+)", source) == ['"bitfleet_model.h"']
        code = re.sub(r"/\*.*?\*/", "", source, flags=re.S)
        assert not re.search(r"\b(float|double|malloc|calloc|free|__builtin\w*)\b", code), kind
        assert "int bitfleet_predict(const uint8_t *x);" in header


def _npz_scores(path: Path, x: NDArray[np.uint8]) -> NDArray[np.int64]:
    """The scores as the npz's description says to compute them, in plain numpy."""
    arrays = np.load(path, allow_pickle=False)
    description = str(arrays["description"])
    offset = arrays["input_offset"].astype(np.int64)
    count = sum(1 for name in arrays.files if name.endswith("_weights"))
    if "bit network" in description:
        s = (x.astype(np.int64) - offset) @ arrays["layer0_weights"].T.astype(np.int64)
        for index in range(1, count):
            a = np.where(s >= 0, 1, -1)
            s = a @ arrays[f"layer{index}_weights"].T.astype(np.int64)
        return s
    a = np.clip(np.floor_divide(x.astype(np.int64) - offset + 1, 2), -127, 127)
    for index in range(count):
        acc = a @ arrays[f"layer{index}_weights"].astype(np.int64) + arrays[f"layer{index}_bias"]
        if index == count - 1:
            return np.clip(acc, -(2**31), 2**31 - 1)
        shift = int(arrays[f"layer{index}_shift"])
        acc = np.maximum(acc, 0)
        acc = (acc + (1 << (shift - 1))) >> shift if shift > 0 else acc << -shift
        a = np.minimum(acc, 127)
    raise AssertionError("no layers")


@pytest.mark.parametrize("kind", list(MODELS))
def test_the_npz_arrays_and_their_description_reproduce_the_scores(
    kind: str, trained: dict[str, Path], test_split: NDArray[np.uint8], tmp_path: Path
) -> None:
    done = _bitfleet("export", str(trained[kind]), "--format", "npz", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    model, _ = load_model(trained[kind])
    assert isinstance(model, BitMLP | FixedMLP)
    scores = _npz_scores(tmp_path / "bitfleet_model.npz", test_split)
    assert np.array_equal(scores, model.scores(test_split))


def test_what_cannot_be_exported_is_refused_with_exit_2(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    floated = tmp_path / "float.bfm"
    done = _bitfleet(
        "train", "--algo", "float", "--dataset", "digits", "--epochs", "1", "--out", str(floated)
    )
    assert done.returncode == 0, done.stderr
    refused = _bitfleet("export", str(floated), "--out", str(tmp_path / "c"))
    assert refused.returncode == 2 and "float model" in refused.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    refused = _bitfleet("export", str(trained["binary"]), "--out", str(blocker))
    assert refused.returncode == 2 and "is a file" in refused.stderr
    garbage = tmp_path / "garbage.bfm"
    garbage.write_bytes(b"BFM1" + bytes(100))
    refused = _bitfleet("export", str(garbage), "--out", str(tmp_path / "g"), "--json")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    refused = _bitfleet(
        "export", str(trained["binary"]), "--out", str(tmp_path), "--word-bits", "16"
    )
    assert refused.returncode == 2 and "--word-bits" in refused.stderr


def test_a_federated_jobs_model_exports_without_its_training_state(
    tmp_path: Path, test_split: NDArray[np.uint8]
) -> None:
    """A job's model carries strength planes for its agents; the C model is the network."""
    with in_process(tmp_path / "coordinator") as coordinator:
        agents = coordinator.online(2)
        job_id = coordinator.submit(agents_per_round=2, min_agents=2, rounds=1)
        coordinator.tick()
        model = coordinator.model(job_id, 0)
        for agent in agents:
            assert agent.upload(job_id, 0, agent.update(model, job_id, 0)).status_code == 200
        coordinator.tick()
        published = coordinator.coordinator.jobs.model(job_id)
    assert any(name.startswith("strength_") for name in decode_frame(published).tensors)
    path = tmp_path / "job.bfm"
    path.write_bytes(published)
    assert _bitfleet("export", str(path), "--out", str(tmp_path / "c")).returncode == 0
    network, _ = load_model(path)
    assert isinstance(network, BitMLP)
    predicted, scores = _run(_compiled(tmp_path / "c", []), test_split)
    assert np.array_equal(scores, network.scores(test_split))
    assert np.array_equal(predicted, network.predict(test_split))
