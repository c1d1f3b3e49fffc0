"""hnc-clip: fine-tune CLIP with Hard Negative Captions (HNC) on HF Transformers/Accelerate.

Layers, each importing only the ones before it (`tests/test_layers.py`):

- the library: `arguments`, `modeling`, `forward`, `losses`, `schedules`, `gradcache`, `trainer`, `callbacks`,
  `card`, `tiny`; its data sub-package `hnc_clip.data`; the evaluation library `hnc_clip.evaluation`;
- the applications, `hnc_clip.scripts` (`train`, `evaluate`, `build_image_cache`: the console scripts);
- the offline world and demo, `hnc_clip.demo`.
"""

__version__ = "0.1.0"
