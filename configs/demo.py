"""EPAM-Net on the synthetic stick-figure dataset, small clips, CPU-sized (``make demo``).

    python -m epam_jax.data.synthetic runs/demo/data --num-classes 6 --train 192 --val 48 \\
        --size 64 64
    python train.py --config configs/demo.py --workdir runs/demo/run
"""

from configs import default


def get_config():
    c = default.get_config()
    c.unlock()
    c.data.annotations = "runs/demo/data/annotations.pkl"
    c.data.train_split = "train"
    c.data.val_split = "val"
    c.data.num_classes = 6
    c.data.clip_len = 16
    c.data.rgb_stride = 4  # 4 RGB frames
    c.data.rgb_size = 64
    c.data.heatmap_size = 16
    c.data.worker_count = 0
    c.data.read_threads = 2
    c.model.dropout_ratio = 0.2
    c.batch_size = 16
    c.eval_batch_size = 16
    c.num_epochs = 8  # 96 steps of 16 clips
    c.eval_every_steps = 48
    c.optimizer.lr = 0.1
    c.optimizer.warmup_steps = 6
    c.log_every_steps = 4
    c.keep_checkpoints = 1
    c.attention_picture = True
    c.lock()
    return c
