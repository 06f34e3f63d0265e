"""Issue 17, item 2: per-shard image features, locally and on Ray Data, resumable shard by shard."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fixtures import raw_tar
from gramlib.data.shard_features import extract_shard_features, load_shard_features


@pytest.fixture(scope="module")
def shards(smoke, tmp_path_factory) -> list[Path]:
    """Two of the smoke world's shards (500 pairs each) and one with a corrupt image between good ones."""
    d = tmp_path_factory.mktemp("cc3m")
    src = sorted((smoke.root / smoke.cc3m_dir).glob("*.tar"))[:2]
    for p in src:
        shutil.copy(p, d / p.name)
    import tarfile

    with tarfile.open(src[0]) as tf:  # two good samples of the first shard, around a broken one
        members = [m for m in tf if m.isfile()][:6]
        good = [(f"9{m.name}", tf.extractfile(m).read()) for m in members]
    raw_tar(d / "00002.tar", good[:3] + [("900000000.jpg", b"not a jpeg"), ("900000000.txt", b"a broken one")] + good[3:])
    return sorted(d.glob("*.tar"))


def _single_process(smoke, shard_dir: Path) -> tuple[np.ndarray, list[str]]:
    from gramlib.clip.features import encode_images, eval_transform
    from gramlib.clip.pretrain import load_profile_backbone
    from gramlib.data.corpus import load_corpus

    corpus = load_corpus(shard_dir)
    bb = load_profile_backbone(smoke)
    return encode_images(bb, corpus.images, eval_transform(bb), None, identity=[]).numpy(), corpus.keys


def test_local_extraction_equals_the_single_process_features(smoke, shards, tmp_path):
    res = extract_shard_features(smoke, shards, tmp_path / "feat", batch_size=128)
    assert res.computed == [p.name for p in shards] and not res.reused
    assert res.skipped == [("00002.tar", "900000000", res.skipped[0][2])] and "corrupt image" in res.skipped[0][2]
    feats, keys = load_shard_features(tmp_path / "feat", shards)
    ref, ref_keys = _single_process(smoke, shards[0].parent)
    assert keys == ref_keys and isinstance(feats, np.memmap)
    np.testing.assert_allclose(feats, ref, atol=1e-6, rtol=0)


def test_a_killed_extraction_resumes_with_no_shard_done_twice(smoke, shards, tmp_path):
    out = tmp_path / "feat"
    first = extract_shard_features(smoke, shards, out, stop_after=1)  # "killed" after its first shard
    assert len(first.computed) == 1
    second = extract_shard_features(smoke, shards, out)
    assert second.reused == first.computed and set(second.computed).isdisjoint(first.computed)
    assert sorted(first.computed + second.computed) == [p.name for p in shards]
    assert extract_shard_features(smoke, shards, out).computed == []  # all done
    os.utime(shards[1])  # a rewritten shard is computed again, alone
    assert extract_shard_features(smoke, shards, out).computed == [shards[1].name]


@pytest.mark.timeout(600)
def test_ray_data_extraction_equals_the_single_process_features_and_resumes(ray_cluster, smoke, shards, tmp_path):
    from gramlib.compute import ComputeConfig

    cfg = ComputeConfig(backend="ray", num_cpus=2)
    out = tmp_path / "feat"
    first = extract_shard_features(smoke, shards, out, compute=cfg, batch_size=96, stop_after=1)
    assert len(first.computed) == 1
    second = extract_shard_features(smoke, shards, out, compute=cfg, batch_size=96)
    assert set(second.computed).isdisjoint(first.computed) and sorted(first.computed + second.computed) == [p.name for p in shards]
    assert ("00002.tar", "900000000") in [s[:2] for s in first.skipped + second.skipped]
    feats, keys = load_shard_features(out, shards)
    ref, ref_keys = _single_process(smoke, shards[0].parent)
    assert keys == ref_keys
    np.testing.assert_allclose(feats, ref, atol=1e-6, rtol=0)


def test_chc_per_shard_features_equal_the_single_pass(smoke, shards, tmp_path):
    """The CHC stage's two local extraction modes give the same image features in corpus order."""
    from gramlib.chc.stage import ExtractionConfig, backbone_features
    from gramlib.data.corpus import load_corpus

    corpus = load_corpus(shards[0].parent)
    img, txt = backbone_features(smoke, corpus, tmp_path / "a")
    img2, txt2 = backbone_features(smoke, corpus, tmp_path / "b", ExtractionConfig(per_shard=True, batch_size=100))
    assert len(list((tmp_path / "b").glob("shards-*/*.npy"))) == len(shards) + 1  # one per shard + the joined one
    assert isinstance(img2, np.memmap) and img2.shape == img.shape
    np.testing.assert_allclose(img2, img, atol=1e-6, rtol=0)
    assert np.array_equal(txt2, txt)
    with pytest.raises(ValueError, match="chc.extraction.backend"):
        ExtractionConfig(backend="spark")
    # the per-shard files are matched to the corpus by key: a corpus listing its pairs in another order gets
    # its features in that order; a key no shard file holds is named
    import dataclasses

    flipped = dataclasses.replace(corpus, keys=corpus.keys[::-1])
    img3, _ = backbone_features(smoke, flipped, tmp_path / "b", ExtractionConfig(per_shard=True, batch_size=100))
    np.testing.assert_array_equal(np.asarray(img3), np.asarray(img2)[::-1])
    stray = dataclasses.replace(corpus, keys=[*corpus.keys[:-1], "nowhere-key"])
    with pytest.raises(ValueError, match=r"no feature for key\(s\) \['nowhere-key'\]"):
        backbone_features(smoke, stray, tmp_path / "b", ExtractionConfig(per_shard=True, batch_size=100))


def test_actor_pools_leave_the_cpus_ray_data_needs():
    """Pool sizes by hand: a GPU share per actor; on CPUs only, every CPU but one (all held deadlocks)."""
    from gramlib.compute import UnitResources
    from gramlib.data.shard_features import actor_pool

    assert actor_pool({"CPU": 2.0}, UnitResources(cpus=1, gpus=0)) == (1, {}, "cpu")
    assert actor_pool({"CPU": 16.0}, UnitResources(cpus=2, gpus=0)) == (7, {}, "cpu")
    assert actor_pool({"CPU": 1.0}, UnitResources(cpus=1, gpus=0))[0] == 1  # never an empty pool
    assert actor_pool({"CPU": 16.0, "GPU": 8.0}, UnitResources(cpus=1, gpus=0.5)) == (16, {"num_gpus": 0.5}, "cuda")


@pytest.mark.timeout(600)
def test_a_ray_extraction_killed_mid_job_resumes_with_no_shard_done_twice(smoke, shards, tmp_path):
    """SIGKILL of the whole Ray job (driver, its local cluster and encoder actors) the moment its first
    shard file is complete; the rerun computes exactly the shards without a finished file, and every
    shard's features equal the single-process ones."""
    import pickle
    import signal
    import subprocess
    import sys
    import time

    from gramlib.data.shard_features import shard_done

    many = tmp_path / "cc3m"
    many.mkdir()
    for k in range(3):  # six shards (names distinct), so the job is mid-way when the first one lands
        for p in shards[:2]:
            shutil.copy(p, many / f"{k}{p.name}")
    jobs = sorted(many.glob("*.tar"))
    ref = tmp_path / "ref"
    extract_shard_features(smoke, shards[:2], ref)
    (tmp_path / "profile.pkl").write_bytes(pickle.dumps(smoke))
    out, log = tmp_path / "feat", tmp_path / "job.log"
    code = ("import pathlib, pickle\n"
            "from gramlib.compute import ComputeConfig\n"
            "from gramlib.data.shard_features import extract_shard_features\n"
            f"prof = pickle.loads(pathlib.Path({str(tmp_path / 'profile.pkl')!r}).read_bytes())\n"
            f"shards = sorted(pathlib.Path({str(many)!r}).glob('*.tar'))\n"
            f"extract_shard_features(prof, shards, {str(out)!r}, compute=ComputeConfig(backend='ray', num_cpus=2), batch_size=96)\n")
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent)]), "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as fh:
        job = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=fh, stderr=subprocess.STDOUT,
                               start_new_session=True)
        deadline = time.monotonic() + 400
        while not any(shard_done(out, p) for p in jobs):
            assert job.poll() is None, f"the job ended before its first shard: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "no shard finished in 400 s"
            time.sleep(0.02)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    finished = {p.name for p in jobs if shard_done(out, p)}
    assert 0 < len(finished) < len(jobs), finished  # killed mid-job
    res = extract_shard_features(smoke, jobs, out)
    assert set(res.reused) == finished and set(res.computed) == {p.name for p in jobs} - finished
    for p in jobs:
        np.testing.assert_allclose(np.load(out / f"{p.stem}.npy"), np.load(ref / f"{p.name[1:-4]}.npy"), atol=1e-6, rtol=0)
