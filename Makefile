# Shortcuts for the scripts, which are what the README and CI use.
.PHONY: run test setup clean
run:
	scripts/run
test:
	scripts/test
setup:
	scripts/setup
clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
