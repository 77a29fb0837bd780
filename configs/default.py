"""The paper's recipe (sec. 7): EPAM-Net on NTU-format data, SGD + cosine, batch 24.

    python train.py --config configs/default.py --workdir runs/ntu60_xsub \\
        --config.data.annotations=ntu60_2d.pkl --config.data.video_root=ntu60_prepared
    python train.py --config configs/default.py:toyota_cs ...   # another dataset recipe

After the colon: a dataset recipe of ``epam_jax.data.datasets`` (ntu60_xsub (default),
ntu60_xview, ntu120_xsub, ntu120_xset, pkummd_xsub, pkummd_xview, toyota_cs, toyota_cv2);
it sets the class count, the split names and the metric the best checkpoint is chosen by.
"""

import ml_collections
from ml_collections import config_dict

from epam_jax.data.datasets import get_recipe


def get_config(recipe: str = "ntu60_xsub") -> ml_collections.ConfigDict:
    r = get_recipe(recipe)
    c = ml_collections.ConfigDict()
    c.mode = "epam"  # 'epam' (two streams + attention), 'rgb' or 'pose' (pre-training)
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.recipe = r.name
    c.data.annotations = ""  # PoseC3D pickle
    c.data.video_root = ""  # prepared videos (python -m epam_jax.prepare); default
    # <annotations folder>/videos
    c.data.video_ext = ".mp4"
    c.data.train_split = r.train_split
    c.data.val_split = r.val_split
    c.data.num_classes = r.num_classes
    # refuse dataset videos that are not person-aligned square frames (raw 1920x1080
    # videos would be squeezed to 224x224); False for videos known to be right
    c.data.require_prepared = True
    c.data.clip_len = 48  # pose frames; RGB takes every rgb_stride-th
    c.data.rgb_stride = 3
    c.data.rgb_size = 224
    c.data.heatmap_size = 56
    c.data.sigma = 0.6
    c.data.flip_prob = 0.5
    # ship keypoints and uint8 frames (2.4 MB a clip) and draw heatmaps / normalise on the
    # device; False: float32 frames and heatmaps made on the host (19.8 MB a clip)
    c.data.device_inputs = True
    c.data.worker_count = 8  # decoding processes per host
    c.data.read_threads = 4
    c.data.prefetch = 8

    c.model = ml_collections.ConfigDict()
    c.model.dropout_ratio = 0.5
    c.model.attention_type = "CBAM_spatial_efficient_temporal"
    c.model.freeze_rgb = False
    c.model.freeze_pose = False
    # recomputed in the backward pass: 'none', 'first' (each stream's first stage: about a
    # third less memory), 'all', or stage paths 'rgb_backbone/layer1,pose_backbone/layer2'
    c.model.remat = "none"
    c.model.dtype = "float32"

    c.init = ml_collections.ConfigDict()
    c.init.checkpoint = ""  # whole model: epam-jax directory or PyTorch file
    c.init.rgb = ""  # single-stream checkpoints for mode 'epam' (the paper's start)
    c.init.pose = ""

    c.batch_size = 24  # global: 12 per GPU on 2 GPUs
    c.eval_batch_size = 24
    c.num_epochs = 24
    c.num_train_steps = -1  # > 0 overrides num_epochs

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = config_dict.placeholder(float)  # None: base_lr * batch / base_batch
    c.optimizer.base_lr = 0.001
    c.optimizer.base_batch_size = 16
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 3e-4
    c.optimizer.grad_clip_norm = 40.0
    c.optimizer.warmup_steps = 0
    c.optimizer.label_smoothing = 0.0
    c.optimizer.rgb_lr_mult = 1.0
    c.optimizer.pose_lr_mult = 1.0
    c.optimizer.attention_lr_mult = 1.0

    c.parallel = "jit"  # or 'pmap'
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ""  # e.g. 10.0.0.1:1234; empty: cluster env
    c.distributed.num_processes = -1
    c.distributed.process_id = -1
    c.distributed.auto = True  # initialise from SLURM/Open MPI/JAX_COORDINATOR_ADDRESS

    c.faults = ml_collections.ConfigDict()
    # no step completed for this long: stop with one line (a hang); 0: never
    c.faults.step_timeout_s = 600
    # several processes: stop this long after another one stopped answering
    c.faults.lost_after_s = 20
    c.faults.heartbeat_timeout_s = 60  # jax.distributed's own health check
    c.faults.save_timeout_s = 600  # one checkpoint write; 0: no limit

    c.log_every_steps = 50
    # warn once when more than this share of wall time waits for the loader (3 windows)
    c.input_wait_warning = 0.2
    c.eval_every_steps = -1  # -1: once per epoch
    c.checkpoint_every_steps = -1  # -1: at every evaluation
    c.keep_checkpoints = 3
    c.keep_best_checkpoints = 1
    c.export_best = True  # model/ holds the best checkpoint by best_metric, else the last
    c.best_metric = r.best_metric  # 'fused/top1', or the recipe's headline metric
    c.resume = True
    c.progress_bar = True
    c.attention_picture = False
    c.lock()
    return c
