"""Write a synthetic espeak-ng speech corpus (see ``tatk.synthetic.speech``).

    python tools/synth_corpus.py OUT --layout parquet --train 200 --dev 20 --test 20 --seed 0 [--rows-per-file 25]

``--layout parquet`` lays OUT out like the LoquaciousSet Hub repo (``load_dataset(OUT, "small")``);
``--layout folder`` writes ``OUT/<split>/metadata.csv`` next to the audio files.
"""

import argparse
import time

from tatk.synthetic.sentences import make_splits
from tatk.synthetic.speech import write_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="output folder")
    parser.add_argument("--layout", choices=["parquet", "folder"], default="parquet")
    parser.add_argument("--train", type=int, default=200, help="train utterances")
    parser.add_argument("--dev", type=int, default=20, help="dev utterances")
    parser.add_argument("--test", type=int, default=20, help="test utterances")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subset", default="small", help="config name of the parquet layout")
    parser.add_argument("--rows-per-file", type=int, default=1000,
                        help="rows per parquet file (each file is one unit of work for `tatk shard`)")
    args = parser.parse_args()

    start = time.perf_counter()
    splits = make_splits(args.train, args.dev, args.test, seed=args.seed)
    seconds = write_corpus(args.out, splits, layout=args.layout, seed=args.seed, subset=args.subset,
                           rows_per_shard=args.rows_per_file)
    n = sum(len(s) for s in splits.values())
    print(f"{args.out}: {n} utterances, {sum(seconds.values()) / 3600:.3f} hours "
          f"({', '.join(f'{k} {len(v)}' for k, v in splits.items())}) in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
