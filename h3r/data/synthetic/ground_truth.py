"""The COCO person-keypoints ground truth of synthetic people, built in memory for COCOeval."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import numpy as np

from h3r.data.coco import COCO_KEYPOINT_NAMES, COCO_SKELETON, PERSON_CATEGORY_ID

if TYPE_CHECKING:
    from h3r.data.synthetic.people import PersonScene


def coco_ground_truth(items: Iterable[tuple[int, PersonScene]], image_size: int) -> dict:
    """A ``person_keypoints_*.json`` dict of ``(index, scene)`` pairs: one image per item (id
    ``index + 1``, square ``image_size``) holding one person annotation (the same id)."""
    images, annotations = [], []
    for index, scene in items:
        flags = scene.flags
        keypoints = np.where(flags[:, None] > 0, scene.keypoints, 0.0)
        x1, y1, x2, y2 = (float(v) for v in scene.box)
        images.append({"id": int(index) + 1, "file_name": f"{int(index) + 1:012d}.jpg",
                       "width": image_size, "height": image_size})
        annotations.append({"id": int(index) + 1, "image_id": int(index) + 1, "category_id": PERSON_CATEGORY_ID,
                            "iscrowd": 0, "area": scene.area, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "num_keypoints": int((flags > 0).sum()),
                            "keypoints": np.concatenate([keypoints, flags[:, None]], axis=1).ravel().tolist()})
    category = {"supercategory": "person", "id": PERSON_CATEGORY_ID, "name": "person",
                "keypoints": list(COCO_KEYPOINT_NAMES), "skeleton": [list(pair) for pair in COCO_SKELETON]}
    return {"images": images, "annotations": annotations, "categories": [category]}
