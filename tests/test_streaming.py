"""Issue 20, defect 10: CHC and meta-training never hold a whole corpus of images in RAM.

The corpus keeps where each image lies in its shard and decodes on access; image-side meta-training
gathers each step's pixels from a :class:`PixelBank` under a memory budget.  Checked against an
independent read of the same shards (webdataset-style tar iteration + PIL), and end to end: a
meta-training run that streams every step equals one whose pixels all fit in memory.
"""

from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import make_shards, raw_tar
from gramlib.data.corpus import ShardImages, load_corpus
from gramlib.data.pixel_bank import PixelBank


def _independent_images(shard_dir) -> dict[str, np.ndarray]:
    """key -> RGB pixels, read with tarfile and PIL directly (not through gramlib)."""
    out = {}
    for shard in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf:
                if m.name.endswith(".jpg"):
                    out[m.name.split(".")[0]] = np.asarray(Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB"))
    return out


def test_corpus_holds_spans_and_decodes_the_same_pixels(tmp_path):
    make_shards(tmp_path / "cc3m", n=11, shard_size=4)
    corpus = load_corpus(tmp_path / "cc3m")
    assert isinstance(corpus.images, ShardImages)  # no decoded image is kept
    assert not any(isinstance(v, Image.Image) for v in vars(corpus.images).values())
    ref = _independent_images(tmp_path / "cc3m")
    assert sorted(ref) == sorted(corpus.keys)
    for i, key in enumerate(corpus.keys):
        np.testing.assert_array_equal(np.asarray(corpus.images[i]), ref[key])
        np.testing.assert_array_equal(np.asarray(corpus.image_of(key)), ref[key])
    # slices, position lists, negative indices and lazy subsets agree with single reads
    assert [np.asarray(x).tolist() for x in corpus.images[2:7]] == [np.asarray(corpus.images[i]).tolist() for i in range(2, 7)]
    sub = corpus.images.take([9, 0, 4])
    assert isinstance(sub, ShardImages) and len(sub) == 3
    np.testing.assert_array_equal(np.asarray(sub[0]), ref[corpus.keys[9]])
    np.testing.assert_array_equal(np.asarray(corpus.images[-1]), ref[corpus.keys[-1]])
    with pytest.raises(IndexError):
        corpus.images[11]
    again = pickle.loads(pickle.dumps(corpus.images))  # cheap to send to a worker
    np.testing.assert_array_equal(np.asarray(again[5]), ref[corpus.keys[5]])


def test_corrupt_images_are_still_caught_when_the_corpus_is_read(tmp_path):
    make_shards(tmp_path / "cc3m", n=3, shard_size=3)
    raw_tar(tmp_path / "cc3m" / "00001.tar", [("000010000.jpg", b"not a jpeg"), ("000010000.txt", b"a cat")])
    corpus = load_corpus(tmp_path / "cc3m")
    assert len(corpus) == 3 and corpus.read_stats["skipped_corrupt_image"] == 1
    assert corpus.read_stats["skipped"][0][:2] == ["00001.tar", "000010000"]


def test_a_shard_rewritten_after_reading_is_named(tmp_path):
    make_shards(tmp_path / "cc3m", n=3, shard_size=3)
    corpus = load_corpus(tmp_path / "cc3m")
    shard = tmp_path / "cc3m" / "00000.tar"
    shard.write_bytes(b"\0" * shard.stat().st_size)
    with pytest.raises(ValueError, match="00000.tar.*rewritten"):
        corpus.images[1]


def _transform(im):
    return torch.from_numpy(np.asarray(im.resize((4, 4)), dtype=np.float32)).permute(2, 0, 1) / 255


@pytest.mark.parametrize("budget_items", [0, 3, 100])
def test_pixel_bank_equals_the_whole_tensor_under_any_budget(tmp_path, budget_items):
    make_shards(tmp_path / "cc3m", n=13, shard_size=5)
    images = load_corpus(tmp_path / "cc3m").images
    whole = torch.stack([_transform(images[i]) for i in range(len(images))])  # what the bank replaced
    item_bytes = whole[0].numel() * whole[0].element_size()
    bank = PixelBank(images, _transform, cache_bytes=budget_items * item_bytes)
    assert bank.shape == tuple(whole.shape)
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = torch.as_tensor(rng.integers(0, len(images), size=6))  # repeats included
        torch.testing.assert_close(bank[idx], whole[idx], rtol=0, atol=0)
        assert bank.held_bytes <= budget_items * item_bytes
    if budget_items >= len(images):
        assert bank.decoded == len(images)  # a corpus that fits is decoded once, as the tensor was
    assert bank[[]].shape == (0, *whole.shape[1:])
    with pytest.raises(IndexError):
        bank[[13]]


def test_pixel_bank_reads_image_files(tmp_path):
    from fixtures import write_image

    paths = [write_image(tmp_path / f"{i}.jpg", (6 + i, 5), (40 * i, 10, 200)) for i in range(4)]
    bank = PixelBank([str(p) for p in paths], _transform, cache_bytes=0)
    from gramlib.data.transforms import load_image

    torch.testing.assert_close(bank[[3, 1]], torch.stack([_transform(load_image(paths[3])), _transform(load_image(paths[1]))]))


def test_image_side_meta_training_streams_each_step_with_the_same_result(smoke, tmp_path):
    """A VPT meta-training run whose pixel bank holds 8 items (every step decodes its own) gives the same
    θ, φ and log as one whose bank holds everything; the bank never holds more than its budget."""
    from gramlib.gram.meta import MetaConfig
    from gramlib.gram.meta_data import load_meta_data
    from gramlib.gram.meta_train import build_meta_learner, meta_train
    from gramlib.gram.run_config import MetaTrainConfig
    from gramlib.gram.tasks import TaskConfig

    cfg = MetaTrainConfig(learner="vpt", steps=3, task_source="truth", tasks=TaskConfig(ways=2, shots=1, query=2),
                          meta=MetaConfig(alpha=1.0, lr_theta=1e-2, lr_phi=1e-2, meta_batch=2), ckpt_every=3,
                          threads=1)
    bb, _ = build_meta_learner(smoke, cfg)
    full = load_meta_data(smoke, cfg, bb, features=False)
    item = int(np.prod(full.bank.shape[1:])) * 4
    small = load_meta_data(smoke, cfg, bb, features=False, pixel_cache_bytes=8 * item)
    assert isinstance(small.bank, PixelBank) and small.bank.shape == full.bank.shape
    a = meta_train(smoke, cfg, tmp_path / "full", data=full, backbone=bb)
    b = meta_train(smoke, cfg, tmp_path / "small", data=small, backbone=bb)
    for k in a.theta:
        torch.testing.assert_close(a.theta[k], b.theta[k], rtol=0, atol=0)
    for k in a.phi:
        torch.testing.assert_close(a.phi[k], b.phi[k], rtol=0, atol=0)
    assert a.log.equals(b.log)
    assert small.bank.held_bytes <= 8 * item and small.bank.decoded > 8  # it streamed
    assert full.bank.decoded <= 3 * 2 * 2 * 3 + 1  # each item decoded at most once (+ the first, for the shape)


def test_labelled_meta_data_is_a_pixel_bank_over_files(smoke):
    """The supervised ablation (unigram_supervised) reads the source's training images per step too."""
    from gramlib.gram.meta_data import load_meta_data
    from gramlib.gram.meta_train import build_meta_learner
    from gramlib.gram.run_config import MetaTrainConfig
    from gramlib.gram.tasks import TaskConfig

    cfg = MetaTrainConfig(learner="vpt", task_source="labelled", tasks=TaskConfig(ways=2, shots=1, query=2), threads=1)
    bb, _ = build_meta_learner(smoke, cfg)
    data = load_meta_data(smoke, cfg, bb, features=False, pixel_cache_bytes=0, keep_images=True)
    assert isinstance(data.bank, PixelBank) and data.bank.held_bytes == 0
    x = data.bank[[0, len(data.bank) - 1]]
    assert x.shape == (2, 3, bb.image_size, bb.image_size)
    from gramlib.clip.features import eval_transform

    torch.testing.assert_close(x[0], eval_transform(bb)(data.images[0]), rtol=0, atol=0)


def test_pixel_view_bank_gives_the_batches_of_the_whole_tensor(tmp_path):
    from gramlib.tuning.inputs import PixelViewBank, ViewBank

    make_shards(tmp_path / "cc3m", n=12, shard_size=5)
    pixels = PixelBank(load_corpus(tmp_path / "cc3m").images, _transform, cache_bytes=0)
    pos, labels = torch.tensor([5, 0, 7, 7, 11, 3]), torch.tensor([0, 1, 0, 1, 0, 1])
    lazy, whole = PixelViewBank(pixels, pos, labels), ViewBank(pixels[pos].unsqueeze(0), labels, False)
    assert len(lazy) == len(whole) == 6 and lazy.n_views == whole.n_views == 1
    gen = torch.Generator().manual_seed(0)
    for index in (torch.randperm(6, generator=gen)[:4], torch.arange(6)):
        for a, b in zip(lazy.batch(index, lazy.epoch_view(gen)), whole.batch(index, whole.epoch_view(gen))):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="positions but"):
        PixelViewBank(pixels, pos, labels[:3])


def test_image_side_pretraining_gathers_pixels_per_batch(smoke, tmp_path):
    """The "w/o meta-learning" ablation of an image-side learner trains from a PixelViewBank."""
    from gramlib.gram.pretrain_prompts import PretrainConfig, pretrain_prompts
    from gramlib.gram.test_time import load_meta_result

    summary = pretrain_prompts(smoke, PretrainConfig(learner="vpt", learner_cfg={"n_tokens": 2}, task_source="truth",
                                                     epochs=1, batch_size=8, max_items=24), tmp_path)
    assert summary["n_items"] == 24
    theta = load_meta_result(tmp_path).theta
    assert theta and all(torch.isfinite(v).all() for v in theta.values())
