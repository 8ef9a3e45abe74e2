// The Go client of the shopmesh API: the messages and gRPC clients generated from proto/
// (scripts/generate-clients), committed under gen/ so `go get` finds them. Released by tagging
// clients/go/v<version> (the workspace's version); scripts/check-go-client fails when gen/ is not
// what proto/ generates. The versions below are the oldest the generated code needs (CI builds
// it against Debian's grpc-go 1.33 and protobuf-go 1.28); callers' builds may pick newer ones.
module github.com/shopmesh/shopmesh/clients/go

go 1.19

require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
