"""``nnunet_plus_export_model`` and ``nnunet_plus_install_model``: thin command lines over
:func:`~nnunet_plus.model_export.export.export_model` and :func:`~nnunet_plus.model_export.install.install_model`."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from nnunet_plus.model_export.export import export_model
from nnunet_plus.model_export.install import install_model
from nnunet_plus.model_export.layout import ExportError
from nnunet_plus.paths import PathError, nnunet_folder

__all__ = ["build_export_parser", "build_install_parser", "export_main", "install_main"]

EXPORT_PROG = "nnunet_plus_export_model"
INSTALL_PROG = "nnunet_plus_install_model"


def _fold(value: str) -> int | str:
    if value == "all" or value.isdigit():
        return int(value) if value.isdigit() else value
    raise argparse.ArgumentTypeError(f"invalid fold {value!r}: a number (0, 1, ...) or 'all'")


def build_export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=EXPORT_PROG, description="Pack a trained nnunet_plus model (nnU-Net folds, PLUS classifier with its "
        "operating point, schema, model card) into one zip for nnunet_plus_install_model.")
    parser.add_argument("-d", required=True, help="dataset id or name")
    parser.add_argument("-c", required=True, help="nnU-Net configuration, e.g. 3d_fullres")
    parser.add_argument("-tr", default="nnUNetTrainerPLUS", help="trainer class (default: %(default)s)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: %(default)s)")
    parser.add_argument("-f", nargs="+", type=_fold, default=None,
                        help="folds to pack (default: every fold with checkpoint_final.pth)")
    parser.add_argument("-o", required=True, help="zip file to write (atomic: written fully or not at all)")
    parser.add_argument("--no-classifier", action="store_true", help="leave the PLUS classifier out (nnU-Net alone)")
    return parser


def build_install_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=INSTALL_PROG, description="Install a zip of nnunet_plus_export_model into $nnUNet_results.")
    parser.add_argument("zip", help="the model zip")
    parser.add_argument("--force", action="store_true",
                        help="replace a model folder that is already installed with other content")
    return parser


def _run(prog: str, parser: argparse.ArgumentParser, argv, body) -> int:
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # -h or a usage error: already printed
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return body(args)
    except (ExportError, PathError, ValueError, OSError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1


def export_main(argv: Sequence[str] | None = None) -> int:
    """``nnunet_plus_export_model``."""
    def body(args) -> int:
        card = export_model(args.d, args.c, args.o, trainer=args.tr, plans=args.p, folds=args.f,
                            classifier=not args.no_classifier)
        model = card["model"]
        clf = (f"; PLUS classifier folds {', '.join(map(str, model['classifier_folds']))}"
               if model["classifier_folder"] else "; no PLUS classifier")
        print(f"wrote {args.o}: {model['nnunet_folder']} folds {', '.join(map(str, model['folds']))}{clf}; "
              f"{len(card['files'])} files + model card")
        return 0

    return _run(EXPORT_PROG, build_export_parser(), argv, body)


def install_main(argv: Sequence[str] | None = None) -> int:
    """``nnunet_plus_install_model``."""
    def body(args) -> int:
        result = install_model(args.zip, force=args.force)
        model = result.card["model"]
        if not result.installed:
            print(f"already installed: {', '.join(result.unchanged)} in {nnunet_folder('nnUNet_results')} hold this "
                  "model's files")
            return 0
        print(f"installed {', '.join(result.installed)} into {nnunet_folder('nnUNet_results')}"
              + (f" ({', '.join(result.unchanged)} already up to date)" if result.unchanged else ""))
        print(f"predict with: nnunet_plus_predict -i IN -o OUT -d {model['nnunet_folder'].split('/')[0]} "
              f"-c {model['configuration']} -tr {model['trainer']} -p {model['plans']}")
        return 0

    return _run(INSTALL_PROG, build_install_parser(), argv, body)
