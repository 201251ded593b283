# TierLab: `make run` serves everything on http://127.0.0.1:$(PORT); `make test` runs the suite.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
# Where the embedded default keeps its state (settings.VAR_DIR); TIERLAB_VAR_DIR moves it.
VAR := $(or $(TIERLAB_VAR_DIR),var)
STAMP := $(VENV)/.installed

.PHONY: run test lint format setup clean reset

# (Re)install only when requirements.txt changes; a second `make run` starts in seconds.
$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: TierLab needs Python 3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)
	mkdir -p $(VAR)/run
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py createcachetable
	$(BIN)/python manage.py collectstatic --no-input -v0
	$(BIN)/python manage.py seed_tiers
	$(BIN)/python -c "import os,sys; sys.exit(os.environ.get('TIERLAB_PRODUCTION','') in ('1','true','True','yes','on'))" \
		&& $(BIN)/python manage.py seed_demo || echo "Production mode: no demo account."

# config/run.py: the banner, then honcho with the Procfile (localstripe only when it is the site's Stripe);
# Ctrl-C stops every process within 10 s.
run: setup
	@$(BIN)/python -m config.run --port $(PORT)

# PYTEST_ARGS passes options to pytest, e.g. `make test PYTEST_ARGS='-m "not e2e" -x'` (.ci/run uses it).
test: $(STAMP)
	mkdir -p var
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VAR)/celery $(VAR)/static

# Start again from nothing: the database, broker folders and localstripe state under var/ go, then
# migrate and seed. Needed once after the layout change, which replaced every app's migrations.
reset:
	rm -rf $(VAR)
	$(MAKE) --no-print-directory setup
