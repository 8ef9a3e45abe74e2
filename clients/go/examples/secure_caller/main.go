// Command secure_caller is a caller of another team against the mesh's secure default, with the
// Go client generated from proto/ (clients/go/gen): mutual TLS with its mesh certificate,
// round_robin over every address of the user service (in a cluster: dns:///<headless name>),
// the mesh's retry policy and per-method deadlines from clients/grpc-service-config.json, a
// deadline on every call, and the google.rpc details of errors.
//
// Configured by the SHOPMESH_* variables of clients/secure/README.md. grpc-go before 1.40 retries
// only with GRPC_GO_RETRY=on (clients/secure/run_mesh.py sets it).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io/ioutil"
	"log"
	"os"
	"strings"
	"time"

	catalogv1 "github.com/shopmesh/shopmesh/clients/go/gen/shopmesh/catalog/v1"
	commonv1 "github.com/shopmesh/shopmesh/clients/go/gen/shopmesh/common/v1"
	orderv1 "github.com/shopmesh/shopmesh/clients/go/gen/shopmesh/order/v1"
	paymentv1 "github.com/shopmesh/shopmesh/clients/go/gen/shopmesh/payment/v1"
	userv1 "github.com/shopmesh/shopmesh/clients/go/gen/shopmesh/user/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
)

const deadline = 5 * time.Second

func read(name string) []byte {
	data, err := ioutil.ReadFile(os.Getenv(name))
	if err != nil {
		log.Fatalf("%s: %v", name, err)
	}
	return data
}

// dial opens one channel over every address (comma-separated host:port) with round_robin, the
// service config and the caller's certificate. A cluster resolves dns:///<headless name>:port.
func dial(name, addresses string, creds credentials.TransportCredentials, config string) *grpc.ClientConn {
	r := manual.NewBuilderWithScheme("shopmesh-" + name)
	var addrs []resolver.Address
	for _, a := range strings.Split(addresses, ",") {
		addrs = append(addrs, resolver.Address{Addr: a})
	}
	r.InitialState(resolver.State{Addresses: addrs})
	conn, err := grpc.Dial(r.Scheme()+":///"+name, grpc.WithResolvers(r), grpc.WithTransportCredentials(creds),
		grpc.WithDefaultServiceConfig(config))
	if err != nil {
		log.Fatalf("dial %s: %v", name, err)
	}
	return conn
}

func call() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), deadline)
}

func main() {
	cert, err := tls.X509KeyPair(read("SHOPMESH_CERT"), read("SHOPMESH_KEY"))
	if err != nil {
		log.Fatalf("certificate: %v", err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(read("SHOPMESH_CA"))
	creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots,
		ServerName: os.Getenv("SHOPMESH_SERVER_NAME"), MinVersion: tls.VersionTLS12})
	config := string(read("SHOPMESH_SERVICE_CONFIG"))
	users := userv1.NewUserServiceClient(dial("user", os.Getenv("SHOPMESH_USER_ADDRS"), creds, config))
	products := catalogv1.NewCatalogServiceClient(dial("catalog", os.Getenv("SHOPMESH_CATALOG_ADDR"), creds, config))
	orders := orderv1.NewOrderServiceClient(dial("order", os.Getenv("SHOPMESH_ORDER_ADDR"), creds, config))
	payments := paymentv1.NewPaymentServiceClient(dial("payment", os.Getenv("SHOPMESH_PAYMENT_ADDR"), creds, config))
	run := fmt.Sprintf("%d", time.Now().UnixNano())
	// Each call gets its own deadline; the contexts are released when main returns.
	var cancels []context.CancelFunc
	defer func() {
		for _, c := range cancels {
			c()
		}
	}()
	fresh := func() context.Context {
		ctx, cancel := call()
		cancels = append(cancels, cancel)
		return ctx
	}
	usd := func(minor int64) *commonv1.Money { return &commonv1.Money{CurrencyCode: "USD", AmountMinor: minor} }

	user, err := users.CreateUser(fresh(), &userv1.CreateUserRequest{Email: "go-" + run + "@example.com", DisplayName: "Go caller", RequestId: "go-user-" + run})
	if err != nil {
		log.Fatalf("CreateUser: %v", err)
	}
	for i := 0; i < 20; i++ { // spread over both replicas by round_robin
		if _, err := users.GetUser(fresh(), &userv1.GetUserRequest{Id: user.Id}); err != nil {
			log.Fatalf("GetUser: %v", err)
		}
	}
	sku := "GO-" + run[len(run)-8:]
	if _, err := products.CreateProduct(fresh(), &catalogv1.CreateProductRequest{Product: &catalogv1.Product{
		Sku: sku, DisplayName: "Go example", Active: true, UnitPrice: usd(1250)}}); err != nil {
		log.Fatalf("CreateProduct: %v", err)
	}
	order, err := orders.CreateOrder(fresh(), &orderv1.CreateOrderRequest{UserId: user.Id, RequestId: "go-order-" + run,
		LineItems: []*orderv1.LineItem{{Sku: sku, Quantity: 2}}})
	if err != nil || order.State != orderv1.OrderState_ORDER_STATE_PAID {
		log.Fatalf("CreateOrder: %v %v", order, err)
	}

	// Field violations of a bad request, from the status details.
	_, err = users.CreateUser(fresh(), &userv1.CreateUserRequest{Email: "not-an-email"})
	if code, found := details(err); code != codes.InvalidArgument || !contains(found, "field email") {
		log.Fatalf("bad request: %v, details %v", err, found)
	}
	// The machine-readable kind of a failed precondition.
	_, err = orders.CreateOrder(fresh(), &orderv1.CreateOrderRequest{UserId: user.Id, RequestId: "go-stale-" + run,
		LineItems: []*orderv1.LineItem{{Sku: sku, Quantity: 1, UnitPrice: usd(999)}}})
	if code, found := details(err); code != codes.FailedPrecondition || !contains(found, "precondition PRICE_CHANGED") {
		log.Fatalf("stale price: %v, details %v", err, found)
	}
	// The policy admits this caller to users, the catalog and orders only.
	if _, err := payments.GetPayment(fresh(), &paymentv1.GetPaymentRequest{Id: order.PaymentId}); status.Code(err) != codes.PermissionDenied {
		log.Fatalf("GetPayment: %v, not PERMISSION_DENIED", err)
	}
	fmt.Printf("go secure caller: order %s PAID over mTLS; BadRequest(email), PRICE_CHANGED, PERMISSION_DENIED on payments\n", order.Id)
}

// details reads the google.rpc details of a failed call: "field <name>" per field violation of a
// BadRequest, "precondition <kind>" per violation of a PreconditionFailure.
func details(err error) (codes.Code, []string) {
	st := status.Convert(err)
	found := []string{}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.FieldViolations {
				found = append(found, "field "+v.Field)
			}
		case *errdetails.PreconditionFailure:
			for _, v := range d.Violations {
				found = append(found, "precondition "+v.Type)
			}
		}
	}
	return st.Code(), found
}

func contains(list []string, want string) bool {
	for _, s := range list {
		if s == want {
			return true
		}
	}
	return false
}
