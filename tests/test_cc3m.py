"""img2dataset-style webdataset shards: round trip, corrupt samples, empty shards, captions."""

from __future__ import annotations

import json

import pytest

from gramlib.data.cc3m import (ReadStats, ShardSample, iter_shards, read_captions, read_shards,
                               write_shards)

try:
    from tests.fixtures import jpeg_bytes, make_shards, raw_tar, sample_list
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from fixtures import jpeg_bytes, make_shards, raw_tar, sample_list


def test_round_trip(tmp_path):
    samples = sample_list(7)
    paths = write_shards(samples, tmp_path / "shards", shard_size=3)
    assert [p.name for p in paths] == ["00000.tar", "00001.tar", "00002.tar"]
    stats = json.loads((tmp_path / "shards" / "00002_stats.json").read_text())
    assert stats["count"] == 1 and stats["successes"] == 1 and stats["status_dict"] == {"success": 1}
    rows, rs = read_shards(tmp_path / "shards")
    assert [r[0] for r in rows] == ["000000000", "000000001", "000000002", "000010000", "000010001",
                                    "000010002", "000020000"]
    assert [r[2] for r in rows] == [s.caption for s in samples]
    sizes = [(8, 6), (5, 9), (12, 4)]
    assert [r[1].size for r in rows] == [sizes[i % 3] for i in range(7)]
    assert all(r[1].mode == "RGB" for r in rows)
    key, _, caption, meta = rows[4]
    assert meta["key"] == key and meta["caption"] == caption and meta["status"] == "success"
    assert (meta["width"], meta["height"]) == (5, 9) and meta["url"] == "http://example.invalid/4.jpg"
    assert rs.samples == 7 and rs.shards == 3 and rs.skipped_total == 0
    raw = list(iter_shards(paths[0], decode=False))
    assert raw[0][1] == samples[0].jpg


def test_byte_stable_and_overwrite(tmp_path):
    a = make_shards(tmp_path / "a")
    b = make_shards(tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    with pytest.raises(FileExistsError, match="overwrite"):
        make_shards(tmp_path / "a")
    write_shards(sample_list(2), tmp_path / "a", 3, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["00000.tar", "00000_stats.json"]


def test_readable_by_webdataset(tmp_path):
    import webdataset as wds

    make_shards(tmp_path, n=4, shard_size=2)
    urls = [str(tmp_path / f"{i:05d}.tar") for i in range(2)]
    got = [(s["__key__"], s["txt"].decode()) for s in wds.WebDataset(urls, shardshuffle=False)]
    assert got == [(k, c) for k, _, c, _ in iter_shards(tmp_path, decode=False)]


def test_read_captions(tmp_path):
    make_shards(tmp_path, n=5, shard_size=2)
    df = read_captions(tmp_path)
    assert list(df.columns) == ["key", "caption", "shard"]
    assert len(df) == 5 and df.shard.tolist() == ["00000.tar"] * 2 + ["00001.tar"] * 2 + ["00002.tar"]
    assert df.caption.iloc[3] == "a photo of thing number 3"


def _broken_shard(tmp_path):
    good = jpeg_bytes()
    return raw_tar(tmp_path / "00000.tar", [
        ("k0.jpg", good), ("k0.txt", b"fine caption"), ("k0.json", b"{}"),
        ("k1.jpg", b"\xff\xd8 definitely not a jpeg"), ("k1.txt", b"caption of a broken image"),
        ("k2.jpg", good), ("k2.txt", b"   "),
        ("k3.jpg", good), ("k3.txt", b"\xff\xfe\x00bad"),
        ("k4.jpg", good[: len(good) // 2]), ("k4.txt", b"truncated image"),
        ("k5.jpg", good), ("k5.txt", b"last one"),
    ])


def test_corrupt_image_names_shard_and_key(tmp_path):
    shard = _broken_shard(tmp_path)
    with pytest.raises(ValueError, match=r"00000\.tar: sample 'k1': corrupt image"):
        list(iter_shards(shard))
    stats = ReadStats()
    rows = list(iter_shards(shard, on_corrupt="skip", stats=stats))
    assert [r[0] for r in rows] == ["k0", "k5"]
    assert stats.skipped_corrupt_image == 2 and stats.skipped_bad_caption == 2
    assert ("00000.tar", "k4") in [(s, k) for s, k, _ in stats.skipped]


def test_bad_caption_raises_and_skips(tmp_path):
    shard = raw_tar(tmp_path / "x.tar", [("a.jpg", jpeg_bytes()), ("a.txt", b""), ("b.jpg", jpeg_bytes())])
    with pytest.raises(ValueError, match=r"x\.tar: sample 'a': caption"):
        list(iter_shards(shard, decode=False))
    df = read_captions(shard, on_corrupt="skip", stats=(st := ReadStats()))
    assert len(df) == 0 and st.skipped_bad_caption == 2


def test_empty_shard(tmp_path):
    make_shards(tmp_path, n=2, shard_size=2)
    raw_tar(tmp_path / "00001.tar", [])
    (tmp_path / "00002.tar").write_bytes(b"")
    stats = ReadStats()
    assert len(list(iter_shards(tmp_path, stats=stats))) == 2
    assert stats.empty_shards == ["00001.tar", "00002.tar"]
    with pytest.raises(ValueError, match=r"00001\.tar: empty shard"):
        list(iter_shards(tmp_path, on_empty="raise"))
    with pytest.raises(ValueError, match="on_empty"):
        list(iter_shards(tmp_path, on_empty="ignore"))


def test_truncated_tar_and_writer_checks(tmp_path):
    (p,) = make_shards(tmp_path / "s", n=2, shard_size=2)
    data = p.read_bytes()
    p.write_bytes(data[:700])
    with pytest.raises(ValueError, match="00000.tar"):
        list(iter_shards(p))
    with pytest.raises(ValueError, match="key"):
        write_shards([ShardSample("a.b", jpeg_bytes(), "x")], tmp_path / "w", 2)
    with pytest.raises(ValueError, match="'bad'"):
        write_shards([ShardSample("bad", b"nope", "x")], tmp_path / "w2", 2)
    with pytest.raises(ValueError, match="duplicate"):
        write_shards([ShardSample("k", jpeg_bytes(), "x")] * 2, tmp_path / "w3", 2)
