package dkim_test

import (
	"crypto"
	"strings"
	"testing"

	"github.com/sendq/sendq/dkim"
	"github.com/sendq/sendq/internal/dkimtest"
)

// BenchmarkSign measures what DKIM adds to each message sent: the body
// hash over the whole message, the header hash and one private-key
// operation, for a 1 KB and a 100 KB message and each key type. "reuse" is
// a retry: the prior signature is verified over the message instead.
func BenchmarkSign(b *testing.B) {
	keys := []struct {
		name string
		priv func(b *testing.B) crypto.Signer
	}{
		{"rsa-2048", func(b *testing.B) crypto.Signer { return dkimtest.RSAKey(b) }},
		{"ed25519", func(b *testing.B) crypto.Signer { return dkimtest.Ed25519Key(b) }},
	}
	for _, size := range []struct {
		name string
		n    int
	}{{"1KB", 1 << 10}, {"100KB", 100 << 10}} {
		msg := benchMessage(size.n)
		for _, kc := range keys {
			k, err := dkim.NewKey("contoso.example", "s1", kc.priv(b))
			if err != nil {
				b.Fatal(err)
			}
			s := dkim.NewSigner([]*dkim.Key{k}, nil)
			b.Run(size.name+"/"+kc.name, func(b *testing.B) {
				b.SetBytes(int64(len(msg)))
				b.ReportAllocs()
				cpu := dkimtest.CPUTime()
				for b.Loop() {
					if _, err := s.Sign(msg, from, ""); err != nil {
						b.Fatal(err)
					}
				}
				dkimtest.ReportCPU(b, cpu)
			})
			prior, err := s.Sign(msg, from, "")
			if err != nil {
				b.Fatal(err)
			}
			b.Run(size.name+"/"+kc.name+"/reuse", func(b *testing.B) {
				b.SetBytes(int64(len(msg)))
				b.ReportAllocs()
				cpu := dkimtest.CPUTime()
				for b.Loop() {
					if sig, err := s.Sign(msg, from, prior); err != nil || sig != prior {
						b.Fatal("prior signature not reused", err)
					}
				}
				dkimtest.ReportCPU(b, cpu)
			})
		}
	}
}

// benchMessage is sample with its body grown to about n bytes.
func benchMessage(n int) []byte {
	head, _, _ := strings.Cut(sample, "\r\n\r\n")
	line := "A new lead was created in Salesforce: Fabrikam, Northwind, Contoso.\r\n"
	body := strings.Repeat(line, max(1, (n-len(head))/len(line)))
	return []byte(head + "\r\n\r\n--sendq-0123456789abcdef\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\n" +
		body + "--sendq-0123456789abcdef--\r\n")
}
