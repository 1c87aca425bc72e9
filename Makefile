# The two commands a fresh machine needs (see README): `make demo` and `make test`.
PY := .venv/bin/python

.PHONY: demo test bootstrap lint bench

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
