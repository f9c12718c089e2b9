"""Write a synthetic espeak-ng speech corpus (see ``tatk.synthetic.speech``).

    python tools/synth_corpus.py OUT --layout parquet --train 200 --dev 20 --test 20 --seed 0 [--rows-per-file 25]

``--layout parquet`` lays OUT out like the LoquaciousSet Hub repo (``load_dataset(OUT, "small")``);
``--layout folder`` writes ``OUT/<split>/metadata.csv`` next to the audio files.

``--held-out`` adds two held-out splits that ask whether a model listens or recites its grammar:
``test_order`` (the training vocabulary in word orders the grammar never produces) and ``test_noisy``
(the ``test`` sentences spoken by 8 voices never heard in training, with noise at 15 dB SNR).
``--listen`` changes training to teach listening: a share of training sentences in scrambled word order,
26 voices instead of 12, and noise on a share of training clips; ``--random-voices N`` adds N voices drawn
at random (``tatk.synthetic.voices.random_variant``). The main job's corpus is
``--held-out --listen --random-voices 26 --train-noise 0.5 --train-snr 5 25``.
"""

import argparse
import time

from tatk.synthetic.sentences import make_splits
from tatk.synthetic.speech import write_corpus
from tatk.synthetic.voices import HELDOUT_VARIANTS, MORE_VARIANTS, RANDOM_VARIANTS, TRAIN_VARIANTS, Speaking


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="output folder")
    parser.add_argument("--layout", choices=["parquet", "folder"], default="parquet")
    parser.add_argument("--train", type=int, default=200, help="train utterances")
    parser.add_argument("--dev", type=int, default=20, help="dev utterances")
    parser.add_argument("--test", type=int, default=20, help="test utterances (and test_order / test_noisy with --held-out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subset", default="small", help="config name of the parquet layout")
    parser.add_argument("--rows-per-file", type=int, default=1000,
                        help="rows per parquet file (each file is one unit of work for `tatk shard`)")
    parser.add_argument("--held-out", action="store_true", help="add the test_order and test_noisy splits (--test each)")
    parser.add_argument("--listen", action="store_true", help="scrambled sentences, 26 voices and noise in training")
    parser.add_argument("--scrambled", type=float, default=0.5, help="with --listen: share of scrambled training sentences")
    parser.add_argument("--train-noise", type=float, default=0.3, help="with --listen: share of training clips with noise")
    parser.add_argument("--train-snr", type=float, nargs=2, default=(10.0, 30.0), metavar=("LOW", "HIGH"),
                        help="with --listen: the noisy training clips' SNR range, dB")
    parser.add_argument("--more-voices", action="store_true",
                        help="with --listen: training also spoken by 46 more espeak-ng variants (72 in all)")
    parser.add_argument("--random-voices", type=int, default=0, metavar="N",
                        help=f"with --listen: training also spoken by N voices drawn at random (0-{len(RANDOM_VARIANTS)})")
    parser.add_argument("--train-tilt", type=float, default=0.0,
                        help="with --listen: share of training clips tilted (duller or brighter: --train-tilt-db)")
    parser.add_argument("--train-tilt-db", type=float, nargs=2, default=(-6.0, 3.0), metavar=("LOW", "HIGH"),
                        help="with --train-tilt: range of the tilted clips' slopes, dB per octave (negative: duller)")
    parser.add_argument("--train-speed", type=float, nargs=2, default=(1.0, 1.0), metavar=("LOW", "HIGH"),
                        help="with --listen: speed perturbation range of training clips (1 1: none)")
    parser.add_argument("--train-pitch", type=int, nargs=2, default=(30, 70), metavar=("LOW", "HIGH"),
                        help="with --listen: espeak-ng pitch range of training clips (0-99)")
    args = parser.parse_args()
    trained = {"--more-voices": args.more_voices, "--random-voices": args.random_voices != 0,
               "--train-tilt": args.train_tilt != 0.0, "--train-speed": tuple(args.train_speed) != (1.0, 1.0),
               "--train-snr": tuple(args.train_snr) != (10.0, 30.0),
               "--train-pitch": tuple(args.train_pitch) != (30, 70), "--train-tilt-db": tuple(args.train_tilt_db) != (-6.0, 3.0)}
    if not args.listen and any(trained.values()):
        parser.error(f"{next(k for k, v in trained.items() if v)} shapes the --listen training corpus: add --listen")
    for name, share in {"--train-noise": args.train_noise, "--train-tilt": args.train_tilt}.items():
        if not 0 <= share <= 1:
            parser.error(f"{name} is a share of the training clips, 0 to 1: got {share}")
    if not 0 <= args.random_voices <= len(RANDOM_VARIANTS):
        parser.error(f"--random-voices draws from {len(RANDOM_VARIANTS)} voices: got {args.random_voices}")
    if not 0 < args.train_speed[0] <= args.train_speed[1]:
        parser.error(f"--train-speed needs 0 < LOW <= HIGH: got {args.train_speed[0]} {args.train_speed[1]}")
    if args.train_tilt_db[0] > args.train_tilt_db[1]:
        parser.error(f"--train-tilt-db needs LOW <= HIGH: got {args.train_tilt_db[0]} {args.train_tilt_db[1]}")
    if trained["--train-tilt-db"] and not args.train_tilt:
        parser.error("--train-tilt-db sets the slopes of --train-tilt's clips: add --train-tilt SHARE")
    if not 0 <= args.train_pitch[0] <= args.train_pitch[1] <= 99:
        parser.error(f"--train-pitch needs 0 <= LOW <= HIGH <= 99: got {args.train_pitch[0]} {args.train_pitch[1]}")

    start = time.perf_counter()
    listen, held_out = args.listen, args.held_out
    splits = make_splits(args.train, args.dev, args.test, seed=args.seed, scrambled=args.scrambled if listen else 0.0,
                         n_test_order=args.test if held_out else 0)
    heard = Speaking(TRAIN_VARIANTS) if listen else Speaking()  # dev and test voices are heard in training
    variants = TRAIN_VARIANTS + (MORE_VARIANTS if args.more_voices else ()) + RANDOM_VARIANTS[:args.random_voices]
    train = Speaking(variants, args.train_noise,
                     tuple(args.train_snr), tuple(args.train_pitch), tuple(args.train_speed), args.train_tilt,
                     tuple(args.train_tilt_db))
    speaking = {"train": train if listen else heard, "dev": heard, "test": heard, "test_order": heard}
    if held_out:
        splits["test_noisy"] = splits["test"]  # the same sentences: only the voices and the noise change
        speaking["test_noisy"] = Speaking(HELDOUT_VARIANTS, noise_share=1.0, snr_db=(15.0, 15.0))
    seconds = write_corpus(args.out, splits, layout=args.layout, seed=args.seed, subset=args.subset,
                           rows_per_shard=args.rows_per_file, speaking=speaking)
    n = sum(len(s) for s in splits.values())
    print(f"{args.out}: {n} utterances, {sum(seconds.values()) / 3600:.3f} hours "
          f"({', '.join(f'{k} {len(v)}' for k, v in splits.items())}) in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
