"""Discovers the sidecar's API by gRPC server reflection, as grpcurl or grpcui
would, with Python's grpcio-reflection (which speaks v1alpha): lists the
services, resolves switchyard.v1.Gateway with the message types it uses
from envelope.proto from the reflection answers alone, and shows that one
answer for a symbol carries its file and the files that file imports.

    python3 examples/python/reflect.py 127.0.0.1:50051
"""

import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def files_for_symbol(channel: grpc.Channel, symbol: str) -> list:
    """The file names one FileContainingSymbol answer carries."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    (answer,) = stub.ServerReflectionInfo(iter([request]))
    protos = answer.file_descriptor_response.file_descriptor_proto
    return [FileDescriptorProto.FromString(p).name for p in protos]


def main(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        print("services:", ", ".join(services))
        pool = DescriptorPool(database)
        gateway = pool.FindServiceByName("switchyard.v1.Gateway")
        send = gateway.methods_by_name["Send"]
        envelope = send.input_type.fields_by_name["envelope"].message_type
        print(f"Gateway methods: {len(gateway.methods)}")
        print(f"Send takes {send.input_type.full_name}, whose envelope is "
              f"{envelope.full_name} from {envelope.file.name}")
        # One answer, the file and what it imports: no second round trip.
        print("files for switchyard.v1.Gateway:",
              ", ".join(files_for_symbol(channel, "switchyard.v1.Gateway")))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051")
