"""Entry point: python -m app -i IN -o OUT [-m MODELS] [options]  (also: python app ...).

Options come from the command line, else from environment variables, else defaults:
  --method patlak|reddiff|hqs   PATLAK_METHOD        estimation method (default hqs: see README)
  --t-star MIN                  PATLAK_T_STAR        start of the Patlak fit (default: first frame >= 20 min)
  --input-function CSV          PATLAK_INPUT_FUNCTION  plasma curve instead of the image-derived one
  --idif-mask FILE              PATLAK_IDIF_MASK     blood-pool mask (NIfTI or DICOM SEG) instead of automatic detection
  --device auto|cpu|cuda        PATLAK_DEVICE        where the diffusion prior runs (default auto)
  --samples N                   PATLAK_SAMPLES       stochastic estimates; N > 1 adds a Ki SD map
  --seed N                      PATLAK_SEED          sampler seed (default 0)
  --series-uid UID              PATLAK_SERIES_UID    dynamic series to use when several qualify
  --send-to DEST                PATLAK_SEND_TO       also send the DICOM outputs: dicom://AET@host:port[?calling=AET]
                                                     (C-STORE) or http(s)://host:port/dicom-web (STOW-RS)
  --report / --no-report        PATLAK_REPORT=1|0    one-page PDF report (report.pdf + Encapsulated PDF), default on
  --quiet                       PATLAK_QUIET=1       warnings and errors only
Input, output and model folders: -i/-o/-m or HOLOSCAN_INPUT_PATH / HOLOSCAN_OUTPUT_PATH /
HOLOSCAN_MODEL_PATH, as every MONAI Deploy application. Exit codes: 0 done, 2 bad input, 1 failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python app`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# HQS, the better of the two diffusion-prior methods on the held-out phantoms (benchmarks/results/quality.md:
# against RED-diff +0.1 dB Ki and -0.15 dB V at 25 % dose, +0.3 to +0.5 dB Ki and +0.06 to +0.4 dB V at 10 and 5 %,
# lesion Ki about 1 point lower); conventional Patlak stays one flag away (--method patlak) for comparison with
# other software.
DEFAULT_METHOD = "hqs"
EXIT_BAD_INPUT = 2


def _env(name: str, default=None):
    """The environment variable's text (argparse converts and checks it as it does the option's), else default."""
    value = os.environ.get(name)
    return default if value in (None, "") else value


def _number(cast, minimum, what: str):
    """An argparse type: ``cast`` of the text, at least ``minimum``; the message names the variable too."""
    def convert(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not minimum <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} (from the option or its PATLAK_ variable)")
        return value
    return convert


def parse_options(argv: list[str]) -> tuple[dict, list[str]]:
    """Split argv into this app's options and the SDK's own (-i/-o/-m/-w/-l)."""
    ap = argparse.ArgumentParser(prog="python -m app", add_help=False)
    ap.add_argument("--method", choices=("patlak", "reddiff", "hqs"),
                    default=_env("PATLAK_METHOD", default=DEFAULT_METHOD))
    ap.add_argument("--t-star", dest="t_star", type=_number(float, 0.0, "a time in minutes >= 0"),
                    default=_env("PATLAK_T_STAR"))
    ap.add_argument("--input-function", dest="input_function", default=_env("PATLAK_INPUT_FUNCTION"))
    ap.add_argument("--idif-mask", dest="idif_mask", default=_env("PATLAK_IDIF_MASK"))
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default=_env("PATLAK_DEVICE", default="auto"))
    ap.add_argument("--samples", type=_number(int, 1, "a whole number >= 1"), default=_env("PATLAK_SAMPLES", "1"))
    ap.add_argument("--seed", type=_number(int, 0, "a whole number >= 0"), default=_env("PATLAK_SEED", "0"))
    ap.add_argument("--series-uid", dest="series_uid", default=_env("PATLAK_SERIES_UID"))
    ap.add_argument("--send-to", dest="send_to", default=_env("PATLAK_SEND_TO"))
    ap.add_argument("--report", action=argparse.BooleanOptionalAction,
                    default=_env("PATLAK_REPORT", default="1") not in ("0", "false", "no"))
    ap.add_argument("--quiet", action="store_true", default=_env("PATLAK_QUIET", default="0") not in ("0", ""))
    ap.add_argument("-h", "--help", action="store_true")
    opts, rest = ap.parse_known_args(argv[1:])
    if opts.help:
        print(__doc__)
        raise SystemExit(0)
    if opts.input_function and opts.idif_mask:
        ap.error("give --input-function (a measured plasma curve) or --idif-mask (a blood-pool region), not both")
    if opts.send_to:
        from dynamic_pet.dicom_send import parse_destination
        try:
            parse_destination(opts.send_to)
        except ValueError as exc:
            ap.error(str(exc))
    if opts.device == "auto":
        import torch
        opts.device = "cuda" if torch.cuda.is_available() else "cpu"
    if opts.quiet:
        os.environ.setdefault("HOLOSCAN_LOG_LEVEL", "WARN")  # read when holoscan starts
        if not any(a in ("-l", "--log-level") for a in rest):
            rest += ["-l", "WARN"]
    # holoscan drops argv[0] (the interpreter) and the SDK parser then drops the program name
    return vars(opts), [sys.executable, argv[0]] + rest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    options, sdk_argv = parse_options(argv)
    from app.app import PatlakApp
    from dynamic_pet.errors import InputError

    app = PatlakApp(argv=sdk_argv, options=options)
    try:
        app.run()
    except Exception as exc:  # noqa: BLE001 - holoscan 4 re-raises the operator's own exception, older
        # versions a RuntimeError; either way the InputError kept on the app decides the exit code
        error = exc if isinstance(exc, InputError) else getattr(app, "input_error", None)
        if error is not None:
            logging.getLogger("app").error("bad input: %s", error)
            print(f"error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        logging.getLogger("app").error("failed: %s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
