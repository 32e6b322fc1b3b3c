"""``hlm12erc predict CONVERSATION`` and ``hlm12erc register`` (the headline model into the MLflow registry).

Every bad input ends with one line on stderr (what, why, how to fix) and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

DEFAULT_MODEL = "models/headline"
DEFAULT_METRICS = "metrics/headline.json"
REGISTERED_NAME = "hlm12erc"
DEFAULT_PARAMS = "params.yaml"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message}; see `{self.prog} --help`\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hlm12erc", description="Emotion recognition in conversations (MELD).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    predict = commands.add_parser(
        "predict", help="predict the emotion of every turn of a conversation",
        description="Predict the emotion of every turn of a conversation file: CSV or JSON (a list of turns or "
                    "{\"turns\": [...]}) with speaker, text and optionally clip (an mp4, relative to the file) "
                    "and dialogue. Prints a table, or writes --out.")
    predict.add_argument("conversation", help="conversation .csv or .json")
    source = predict.add_mutually_exclusive_group()
    source.add_argument("--model", default=None,
                        help=f"trained model folder (default {DEFAULT_MODEL}, the DVC headline model)")
    source.add_argument("--model-uri", default=None,
                        help="an MLflow model URI instead, e.g. models:/hlm12erc/1 or runs:/<run id>/model "
                             "(store: HLM12ERC_MLFLOW_URI, else MLFLOW_TRACKING_URI, else mlflow.db at the root of "
                             "the repo you are in)")
    predict.add_argument("--out", default=None,
                         help="write the predictions to this .csv or .json instead, or to an .html page: the "
                              "conversation as a transcript with the predictions, frames and audio")
    predict.add_argument("--params", default=None,
                         help=f"params.yaml for the extract settings of clips (default {DEFAULT_PARAMS} when present)")
    predict.add_argument("--verbose", action="store_true",
                         help="name every turn predicted without all of the model's modalities (by default a few "
                              "examples per reason; the used and media_status columns always give every turn)")
    register = commands.add_parser(
        "register", help="register a trained model in the MLflow model registry (once per model)",
        description="Log a trained model folder as an MLflow pyfunc model and register it under --name with the "
                    "metrics of its evaluation, unless a version of that name already holds exactly these model "
                    "files. `make demo` runs it: on a fresh clone DVC skips the headline stage (its committed "
                    "results match), so nothing else registers the model there. Store: HLM12ERC_MLFLOW_URI, "
                    "else mlflow.db at the root of the repo you are in.")
    register.add_argument("--model", default=DEFAULT_MODEL, help=f"trained model folder (default {DEFAULT_MODEL})")
    register.add_argument("--metrics", default=DEFAULT_METRICS,
                          help=f"that model's metrics JSON from the evaluate stage (default {DEFAULT_METRICS})")
    register.add_argument("--name", default=REGISTERED_NAME, help=f"registered model name (default {REGISTERED_NAME})")
    register.add_argument("--params", default=None,
                          help=f"params.yaml whose extract settings the model keeps (default {DEFAULT_PARAMS} "
                               "when present)")
    return parser


def _params(path: str | None):
    """The params predict and register read (extract, device, batch size): the file's, or its defaults."""
    from hlm12erc.config import load_params, params_from_dict

    if path is None and not Path(DEFAULT_PARAMS).is_file():
        return params_from_dict({})
    return load_params(path or DEFAULT_PARAMS)


def _load_uri(uri: str):
    """The pyfunc model at ``uri`` and its Predictor (for the model's modalities)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import logging

    import mlflow
    from mlflow.exceptions import MlflowException

    from hlm12erc import tracking
    from hlm12erc.predict import PredictError

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no store-creation INFO lines on stderr
    store = os.environ.get(tracking.URI_ENV) or os.environ.get("MLFLOW_TRACKING_URI") or tracking.tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        model = mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise PredictError(f"cannot load model URI {uri} from store {store} ({first}); check the name/version "
                           "(`mlflow ui`, Models tab) or point HLM12ERC_MLFLOW_URI at the right store") from None
    return model, model.unwrap_python_model().predictor


def predict_command(args: argparse.Namespace) -> int:
    from hlm12erc.predict import Predictor, fallback_note, format_result, read_conversation, write_result

    page = bool(args.out) and Path(args.out).suffix.lower() == ".html"
    if args.out and not page and Path(args.out).suffix.lower() not in (".csv", ".json"):
        print(f"predict: --out {args.out}: unsupported suffix; use .csv, .json or .html", file=sys.stderr)
        return 2
    params = _params(args.params)
    turns = read_conversation(args.conversation)  # checked before any model loads
    if args.model_uri:
        model, predictor = _load_uri(args.model_uri)
    else:
        from hlm12erc.runtime import select_device

        model = predictor = Predictor.load(args.model or DEFAULT_MODEL, params.extract,
                                           device=str(select_device(params.train.device)),
                                           eval_batch_size=params.runtime.eval_batch_size)
    if page:
        from hlm12erc.pages import write_predict_page

        with tempfile.TemporaryDirectory(prefix="hlm12erc-page-") as media_dir:
            result, table = predictor.predict_with_media(turns, media_dir)
            write_predict_page(result, table, predictor.labels, predictor.modalities, args.out,
                               f"Predictions of {args.model_uri or Path(predictor.model_dir).name} for "
                               f"{Path(args.conversation).name}")
    else:
        result = model.predict(turns)
    note = fallback_note(result, predictor.modalities, verbose=args.verbose)
    if note:
        print(note, file=sys.stderr)
    if args.out:
        path = args.out if page else write_result(result, args.out)
        print(f"wrote {len(result)} prediction(s) to {path}")
    else:
        print(format_result(result))
    return 0


def register_command(args: argparse.Namespace) -> int:
    from hlm12erc.metrics import read_metrics
    from hlm12erc.pyfunc import register_model

    metrics = read_metrics(args.metrics)
    version, created = register_model(args.model, metrics, args.name, _params(args.params).extract)
    uri = f"models:/{args.name}/{version}"
    if created:
        print(f"registered {args.model} as {args.name} version {version} ({uri})")
    else:
        print(f"{args.model} is already {args.name} version {version} ({uri}); nothing registered")
    return 0


def main(argv: list[str] | None = None) -> int:
    # offline, and stderr keeps only our note / error line
    for name, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                        "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}.items():
        os.environ.setdefault(name, value)
    args = _parser().parse_args(argv)
    from hlm12erc.config import ConfigError
    from hlm12erc.data.meld import DataError

    handled: tuple[type[BaseException], ...] = (ConfigError, DataError, FileNotFoundError, ValueError, OSError)
    if getattr(args, "model_uri", None) or args.command == "register":  # mlflow's import costs over a second
        from mlflow.exceptions import MlflowException

        handled += (MlflowException,)
    try:
        code = {"predict": predict_command, "register": register_command}[args.command](args)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return code
    except BrokenPipeError:  # `hlm12erc predict x.csv | head -1`: exit quietly as a Unix tool does (128 + SIGPIPE)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing more to flush at exit
        os.close(devnull)
        return 141
    except handled as error:
        text = str(error).strip()
        if type(error).__name__ == "MlflowException":  # its first line says why; a server traceback may follow
            text = text.splitlines()[0] if text else ""
        message = " ".join(text.split()) or type(error).__name__
        print(f"{args.command}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
