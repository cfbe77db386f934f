"""Procedural landmark datasets that need no download: faces in the WFLW layout and people
with the 17 COCO joints, rendered with Pillow, deterministic from ``(seed, split, index)``.

Both draw every structure from its landmarks (a face's outline *is* its jaw contour, a lip
polygon *is* its mouth points, a forearm ends at its wrist), so the landmarks sit on image
edges and corners a CNN can find, while rotation, out-of-plane pose, expressions, lighting,
noise, blur, clutter and occluders keep the task from saturating.

Coordinates are image pixels, 0-based, ``(x, y)`` with x the column; pixel centres are at
integers. Shapes are drawn on a 4x canvas and box-filtered down (antialiasing), placed so
that their rendered centres are unbiased (see ``_canvas``); Pillow's inclusive edges widen
filled shapes by ~1/8 px per side.

A dataset builds every item's *scene* (geometry, colours, clutter) when constructed, which
takes ~2.5 ms per item (sets of 400 items or more are drawn by forked processes, one per
core); ``Sample.load_image`` renders it on demand (~1-2 ms at 96-128 px) and is
picklable, so data-loader workers can render in parallel. Rendered images are kept in shared
memory (:class:`h3r.data.cache.SharedImages`, ``cache_images=True``): each is rendered once per
run, by whichever process reads it first, and read from the cache by every process afterwards.

Modules, split along these seams (every public name is importable from here):

* :mod:`~h3r.data.synthetic.scenery`: the split's random streams, shapes, clutter, canvas, finish;
* :mod:`~h3r.data.synthetic.faces`: the parametric face, its pose and rendering, :class:`SyntheticFaces`;
* :mod:`~h3r.data.synthetic.people`: the articulated body, its clothes and rendering, :class:`SyntheticPeople`;
* :mod:`~h3r.data.synthetic.ground_truth`: the COCO ground truth of synthetic people, for COCOeval.
"""
from h3r.data.synthetic.faces import (HEAD_DEPTH, SILHOUETTE_DEPTH_RATIO, FacePose, FaceScene, FaceShape,
                                      SyntheticFaces, face_landmarks, face_landmarks_3d, project, random_face_scene,
                                      random_face_shape, render_face)
from h3r.data.synthetic.ground_truth import coco_ground_truth
from h3r.data.synthetic.people import (Body, PersonScene, SyntheticPeople, dress_body, random_body,
                                       random_person_scene, render_person)
from h3r.data.synthetic.scenery import DEFAULT_SIZES, SPLIT_STREAMS, SUPERSAMPLE, Finish, Shape

__all__ = [
    "DEFAULT_SIZES", "SPLIT_STREAMS", "SUPERSAMPLE", "Finish", "Shape",
    "HEAD_DEPTH", "SILHOUETTE_DEPTH_RATIO", "FacePose", "FaceScene", "FaceShape", "SyntheticFaces", "face_landmarks",
    "face_landmarks_3d", "project", "random_face_scene", "random_face_shape", "render_face",
    "Body", "PersonScene", "SyntheticPeople", "dress_body", "random_body", "random_person_scene", "render_person",
    "coco_ground_truth",
]
