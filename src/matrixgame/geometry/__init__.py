"""Geometry core: cameras, Plücker rays, frustum overlap, action <-> pose kinematics."""

from matrixgame.geometry.cameras import (
    angles_from_pose,
    axis_offsets,
    check_c2w,
    check_intrinsics,
    interpolate_poses,
    intrinsics_from_fov,
    pose_from_angles,
    relative_poses,
    rotation_from_angles,
    se3_inverse,
)
from matrixgame.geometry.frustum import (
    Frusta,
    ViewVolume,
    frustum_samples,
    overlap_exact,
    overlap_sampled,
    select_memory_reference,
    topk_overlap,
)
from matrixgame.geometry.kinematics import (
    PRESETS,
    KinematicsConfig,
    Trajectory,
    get_preset,
    infer_actions,
    integrate_actions,
    keyboard_accuracy,
)
from matrixgame.geometry.plucker import camera_embedding, fold_plucker, plucker_rays

__all__ = [
    "PRESETS",
    "KinematicsConfig",
    "Trajectory",
    "ViewVolume",
    "angles_from_pose",
    "axis_offsets",
    "camera_embedding",
    "check_c2w",
    "check_intrinsics",
    "fold_plucker",
    "Frusta",
    "frustum_samples",
    "get_preset",
    "infer_actions",
    "integrate_actions",
    "interpolate_poses",
    "intrinsics_from_fov",
    "keyboard_accuracy",
    "overlap_exact",
    "overlap_sampled",
    "plucker_rays",
    "pose_from_angles",
    "relative_poses",
    "rotation_from_angles",
    "se3_inverse",
    "select_memory_reference",
    "topk_overlap",
]
