#!/usr/bin/env python
"""Images per second of the input pipeline alone (no model), for one data set.

    python bench/input_pipeline.py quickstart
    python bench/input_pipeline.py ../shared/data/cifar10-jpeg.npz --batch_size 256
    python bench/input_pipeline.py imagenet_folder --data_dir /data/imagenet --eval

Times `make_pipeline(load(NAME)[0 or 1], ...)` with `pipeline_throughput` (public
`gloro_keras.data` API). Exit status 2 with a one-line error when the data is missing.
"""
import argparse
import sys

from gloro_keras import data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Images/s of the gloro_keras input pipeline alone.")
    p.add_argument("name", help="data set name or .npz path (see gloro_keras.data.load)")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--num_batches", type=int, default=100)
    p.add_argument("--eval", action="store_true", help="time the test pipeline instead")
    p.add_argument("--no_augment", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        train, test, info = data.load(args.name, data_dir=args.data_dir)
    except data.DataNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ds = data.make_pipeline(test if args.eval else train, args.batch_size, training=not args.eval,
                            augment=not args.no_augment, seed=args.seed)
    rate = data.pipeline_throughput(ds, args.num_batches)
    print(f"{info.name}: {'test' if args.eval else 'train'} pipeline, batch {args.batch_size}, "
          f"augment={not args.no_augment and not args.eval}: {rate:,.0f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
