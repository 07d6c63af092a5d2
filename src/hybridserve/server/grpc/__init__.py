"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``.

:mod:`~hybridserve.server.grpc.service` is the adapter (messages in, core calls, messages and
status codes out); ``grpc_predict_v2.proto`` is the protocol's definition and the ``_pb2``
modules are generated from it by ``scripts/gen-grpc``. Importing this package needs nothing;
the service needs the ``grpc`` extra (grpcio, protobuf).
"""
