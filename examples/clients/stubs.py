"""Python stubs for careroute's API, generated from proto/careroute/v1 on
first use (grpcio-tools), so the examples never drift from the proto.

    pip install grpcio grpcio-tools
"""

import atexit
import importlib
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTO = os.path.join("careroute", "v1", "careroute.proto")
# The HTTP/JSON bindings' annotations, vendored beside it.
IMPORTS = [os.path.join("google", "api", f) for f in ("http.proto", "annotations.proto")]


def load():
    """Returns the careroute_pb2 and careroute_pb2_grpc modules."""
    from grpc_tools import protoc
    import grpc_tools

    out = tempfile.mkdtemp(prefix="careroute-stubs-")
    # The modules are loaded once imported: the files go with the process.
    atexit.register(shutil.rmtree, out, True)
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    status = protoc.main(
        [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            PROTO,
            *IMPORTS,
        ]
    )
    if status != 0:
        sys.exit(f"protoc could not compile {PROTO}")
    sys.path.insert(0, out)
    pb2 = importlib.import_module("careroute.v1.careroute_pb2")
    pb2_grpc = importlib.import_module("careroute.v1.careroute_pb2_grpc")
    return pb2, pb2_grpc


def channel(target, token=None):
    """A channel to careroute at target (host:port), in plaintext, with a
    bearer token on every call if given. Use grpc.secure_channel with
    grpc.ssl_channel_credentials(...) against a TLS deployment."""
    import grpc

    ch = grpc.insecure_channel(target)
    if token:
        ch = grpc.intercept_channel(ch, _Bearer(token))
    return ch


def _bearer_interceptor():
    import collections

    import grpc

    class Details(
        collections.namedtuple(
            "Details",
            ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
        ),
        grpc.ClientCallDetails,
    ):
        pass

    class Bearer(
        grpc.UnaryUnaryClientInterceptor,
        grpc.UnaryStreamClientInterceptor,
        grpc.StreamUnaryClientInterceptor,
    ):
        def __init__(self, token):
            self.token = token

        def _with(self, d):
            metadata = list(d.metadata or []) + [("authorization", f"Bearer {self.token}")]
            return Details(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready,
                           d.compression)

        def intercept_unary_unary(self, cont, details, request):
            return cont(self._with(details), request)

        def intercept_unary_stream(self, cont, details, request):
            return cont(self._with(details), request)

        def intercept_stream_unary(self, cont, details, requests):
            return cont(self._with(details), requests)

    return Bearer


def _Bearer(token):
    return _bearer_interceptor()(token)
