PYTHON ?= python3
PIP := $(PYTHON) -m pip
# mediapipe pins protobuf<5, which grain cannot import with: it lives in its own
# environment (seeing this one's packages), used by the pose-extraction test.
POSE_ENV := $(CURDIR)/.venv-pose
POSE_PYTHON := $(POSE_ENV)/bin/python

.PHONY: install pose-env lint test bench demo stream-demo

install:
	$(PIP) install -q -e '.[torch,test,onnx]'

pose-env:
	@test -x $(POSE_PYTHON) && $(POSE_PYTHON) -c "import mediapipe" 2>/dev/null || \
	  ($(PYTHON) -m venv --system-site-packages $(POSE_ENV) && \
	   $(POSE_PYTHON) -m pip install -q 'mediapipe==0.10.14') || \
	  echo "pose-env: mediapipe could not be installed; the pose test will skip"

lint: install
	$(PYTHON) -m ruff check --output-format concise .

test: install lint pose-env
	EPAM_POSE_PYTHON=$(POSE_PYTHON) $(PYTHON) -m pytest -q -n 2 -p no:benchmark --durations=15 tests

bench: install
	$(PYTHON) -m benchmarks.run

# Synthetic data -> EPAM-Net trained on CPU -> validation top-1, model, attention picture.
DEMO_DIR ?= runs/demo
demo: install
	rm -rf $(DEMO_DIR)
	$(PYTHON) -m epam_jax.data.synthetic $(DEMO_DIR)/data --num-classes 6 --train 192 --val 48 \
	  --size 64 64
	$(PYTHON) train.py --config configs/demo.py --workdir $(DEMO_DIR)/run \
	  --config.data.annotations=$(DEMO_DIR)/data/annotations.pkl

# After make demo: a synthetic video of six actions (and no person) -> the stream timeline.
stream-demo:
	$(PYTHON) -m epam_jax.data.synthetic $(DEMO_DIR)/long --long-video \
	  wave,clap,walk_across,squat,none,jump,walk_across,turn_around --segment-frames 72
	printf 'wave\nclap\nsquat\njump\nwalk_across\nturn_around\n' > $(DEMO_DIR)/long/names.txt
	$(PYTHON) -m epam_jax.stream $(DEMO_DIR)/long/long.mp4 --checkpoint $(DEMO_DIR)/run/model \
	  --poses $(DEMO_DIR)/long/long_poses.pkl --class-names $(DEMO_DIR)/long/names.txt \
	  --size 64 --clip-len 16 --rgb-stride 4 --window 2 --stride 0.5 \
	  --out-dir $(DEMO_DIR)/stream --video-out $(DEMO_DIR)/stream/annotated.mp4
