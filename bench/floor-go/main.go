// bench/floor-go [ADDR]: grpc-go's hello-world Greeter with grpc-go's default server and
// nothing else (no interceptors, no metrics, no logging), on ADDR (default 127.0.0.1:50101).
//
// scripts/bench-peers runs it beside tonic's floor and the mesh on the same core, so the mesh is
// also read against what grpc-go's bare server costs on this machine, in the same run.
//
// No generated code: helloworld.HelloRequest {string name = 1} and HelloReply {string message = 1}
// have the wire format of google.protobuf.StringValue {string value = 1}, so the service is
// described by hand and its messages are StringValues. grpc-go does the same work as for the
// generated Greeter: the same codec, the same handler path.
package main

import (
	"context"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

type greeter interface {
	SayHello(context.Context, *wrapperspb.StringValue) (*wrapperspb.StringValue, error)
}

type server struct{}

func (server) SayHello(_ context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	return wrapperspb.String("Hello " + in.GetValue() + "!"), nil
}

func sayHello(srv interface{}, ctx context.Context, dec func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
	in := new(wrapperspb.StringValue)
	if err := dec(in); err != nil {
		return nil, err
	}
	return srv.(greeter).SayHello(ctx, in)
}

var greeterDesc = grpc.ServiceDesc{
	ServiceName: "helloworld.Greeter",
	HandlerType: (*greeter)(nil),
	Methods:     []grpc.MethodDesc{{MethodName: "SayHello", Handler: sayHello}},
	Streams:     []grpc.StreamDesc{},
	Metadata:    "helloworld.proto",
}

func main() {
	addr := "127.0.0.1:50101"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("floor-go: listen %s: %v", addr, err)
	}
	s := grpc.NewServer()
	s.RegisterService(&greeterDesc, server{})
	go func() {
		// scripts/bench-peers stops it with SIGINT.
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
		<-stop
		s.Stop()
	}()
	log.Printf("floor-go: grpc-go Greeter on %s", addr)
	if err := s.Serve(lis); err != nil {
		log.Fatalf("floor-go: %v", err)
	}
}
