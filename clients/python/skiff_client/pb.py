"""Every message and enum of Skiff's client API (skiff.v1) in one namespace:
``pb.JobSpec``, ``pb.TaskSpec``, ``pb.ApplyJobRequest``,
``pb.OBJECT_KIND_ALLOCATION``, ``pb.AllocStatus.Name(...)``. They are the
generated protobuf classes of model.proto and cluster.proto."""

from ._gen.model_pb2 import *  # noqa: F401,F403
from ._gen.cluster_pb2 import *  # noqa: F401,F403
