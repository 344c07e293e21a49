package worker

import (
	"crypto/x509"
	"net"
)

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

func x509EmptyPool() *x509.CertPool { return x509.NewCertPool() }
