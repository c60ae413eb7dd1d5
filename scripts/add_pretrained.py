r"""Add an exported learned optimizer to flatl2o's pretrained optimizers.

  python scripts/add_pretrained.py --name=l2o_dm --export_dir=RUN_DIR/optimizer \
      --card_json=card.json [--overwrite]

Copies the export (optimizer.json, meta_params.npz; fully checked) into
flatl2o/pretrained/NAME/ with card.json (the given card, with the export's
architecture, hyper-parameters and checksum filled in) and card.md rendered from
it, writing beside the final folder and renaming (`flatl2o.pretrained.add`).
An existing NAME is refused unless --overwrite. Bad input is one line on stderr,
exit code 2, nothing written. The card's fields: flatl2o/pretrained/_cards.py.
"""

from __future__ import annotations

import json

from absl import flags

from experiments import _cli
from flatl2o import pretrained

_NAME = flags.DEFINE_string("name", None, "Name of the pretrained optimizer (folder name).")
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None, "Exported optimizer folder (e.g. RUN_DIR/optimizer).")
_CARD_JSON = flags.DEFINE_string("card_json", None, "JSON file with the card's fields.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing pretrained optimizer.")
_ROOT = flags.DEFINE_string(
    "root", None, "Folder of the pretrained optimizers; default the package's "
    "flatl2o/pretrained.")
flags.mark_flags_as_required(["name", "export_dir", "card_json"])


def _read_card(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except OSError as e:
    raise ValueError(f"--card_json {path}: {e.strerror or e}") from None
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"--card_json {path} is not JSON ({e})") from None


def main(argv):
  del argv
  card = _read_card(_CARD_JSON.value)
  target = pretrained.add(_NAME.value, _EXPORT_DIR.value, card, root=_ROOT.value,
                          overwrite=_OVERWRITE.value)
  print(f"added pretrained optimizer {_NAME.value!r}: {target}")


if __name__ == "__main__":
  _cli.run(main)
