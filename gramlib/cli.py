"""Command-line entry points of the DVC stages that are not notebooks.

    python -m gramlib.cli world    --profile mini   # generate the mini world (data/<profile>/)
    python -m gramlib.cli pretrain --profile mini   # pre-train the tiny CLIP (artifacts/<profile>/backbone/)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from gramlib.config import get_profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gramlib.cli")
    parser.add_argument("command", choices=["world", "pretrain"])
    parser.add_argument("--profile", default=None, help="profile name in params.yaml (default: its 'profile')")
    parser.add_argument("--params", default=None, help="path of params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    kwargs = {"path": args.params} if args.params else {}
    try:
        profile = get_profile(args.profile, **kwargs)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if args.command == "world":
        from gramlib.world.build import build_world

        manifest = build_world(profile)
        print(f"world for profile {profile.name!r}: {manifest.get('timings')}")
    elif args.command == "pretrain":
        from gramlib.clip.pretrain import pretrain_or_describe

        summary = pretrain_or_describe(profile)
        print(f"backbone for profile {profile.name!r}: {summary.get('seconds')} s, final loss {summary.get('final_loss')}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
