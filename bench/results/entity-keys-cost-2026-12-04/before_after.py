"""`python -m slidr.bench.batch_cost --store embedded` with slidr imported from another source
tree (a checkout of the commit before feature spec 4, built in place), so that before and
after run interleaved on one machine under the same load, from one editable install:

    git archive <commit> | tar -x -C BEFORE && (cd BEFORE && python setup.py build_ext --inplace)
    python before_after.py BEFORE      # the tree before
    python before_after.py             # this tree
"""

import sys
from pathlib import Path

import __editable___slidr_0_1_0_finder as finder  # the editable install's import map

if len(sys.argv) > 1:
    here = str(Path(finder.MAPPING["slidr"]).parent)
    tree = str(Path(sys.argv[1]).resolve())
    for k, v in list(finder.MAPPING.items()):
        finder.MAPPING[k] = v.replace(here, tree)
    for k, v in list(finder.NAMESPACES.items()):
        finder.NAMESPACES[k] = [p.replace(here, tree) for p in v]

from slidr.bench import batch_cost  # noqa: E402

import slidr.featurespec as fs  # noqa: E402

print(Path(fs.__file__).parents[1].name, "SPEC_VERSION", getattr(fs, "SPEC_VERSION", "?"),
      "N_FEATURES", fs.N_FEATURES, flush=True)
batch_cost.main(["--store", "embedded"])
