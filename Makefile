# The two commands a fresh machine needs (see README): `make demo` and `make test`.
PY := .venv/bin/python

.PHONY: demo test bootstrap lint bench wheel lock docs check-install

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	SLIDR_REQUIRE_NATIVE=1 $(PY) -m slidr.cli demo --out demo-out

lint: bootstrap
	$(PY) -m ruff check slidr ext slidrd offline engines bench tests
	$(PY) -m mypy --strict --follow-imports=silent slidrd

test: bootstrap lint
	SLIDR_REQUIRE_NATIVE=1 SLIDR_REQUIRE_THIRD_PARTY=1 $(PY) -m pytest -q -p no:cacheprovider

bench: bootstrap
	SLIDR_REQUIRE_NATIVE=1 $(PY) -m slidr.cli bench kernel

# Production install (docs/install.md): the wheel, the pinned dependencies, the generated docs.
wheel: bootstrap
	rm -rf build/bdist.*
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist .

lock: bootstrap
	$(PY) scripts/lock.py

docs: bootstrap
	$(PY) -m slidr.docgen

# Follows docs/install.md from scratch in a scratch directory (a few minutes).
check-install: bootstrap
	scripts/check-install.sh
