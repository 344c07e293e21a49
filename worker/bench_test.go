package worker_test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sendq/sendq/dkim"
	"github.com/sendq/sendq/internal/dkimtest"
	"github.com/sendq/sendq/internal/smtptest"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/worker"
)

// benchEmail is a typical queued email: two To, one Cc, a 1 KB HTML body
// and a small attachment.
func benchEmail() *queue.Email {
	return &queue.Email{
		V: queue.PayloadVersion, ID: "01a21a7f-c7f9-7166-8b55-540c1132fe89", CreatedAt: time.Now().UTC(),
		From:    queue.Address{Name: "Sales Bot", Address: "sales-bot@contoso.example"},
		To:      []queue.Address{{Address: "recipient1@contoso.example"}, {Address: "recipient2@contoso.example"}},
		Cc:      []queue.Address{{Address: "owner@contoso.example"}},
		Subject: "새 잠재 고객 생성됨", IsHTML: true, Importance: queue.ImportanceHigh,
		Body:        "<p>" + strings.Repeat("A new lead was created in Salesforce. ", 27) + "</p>",
		Attachments: []queue.Attachment{{FileName: "hello.txt", ContentType: "text/plain", Data: []byte("hello world")}},
	}
}

// BenchmarkBuildMessage measures turning a queued email into MIME: build
// the go-mail message and write it out, as every delivery attempt does.
func BenchmarkBuildMessage(b *testing.B) {
	e := benchEmail()
	b.ReportAllocs()
	cpu := dkimtest.CPUTime()
	for b.Loop() {
		m, err := worker.BuildMessage(e)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := m.WriteTo(io.Discard); err != nil {
			b.Fatal(err)
		}
	}
	dkimtest.ReportCPU(b, cpu)
}

// BenchmarkRenderMessage measures what one delivery attempt spends on the
// message before SMTP: rendering with stable boundaries (RenderMessage),
// the text part derived from the HTML, and a DKIM signature on top, with
// each key type. Compare with BenchmarkBuildMessage (go-mail alone).
func BenchmarkRenderMessage(b *testing.B) {
	e := benchEmail()
	rsaKey, err := dkim.NewKey("contoso.example", "s1", dkimtest.RSAKey(b))
	if err != nil {
		b.Fatal(err)
	}
	edKey, err := dkim.NewKey("contoso.example", "s2", dkimtest.Ed25519Key(b))
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		opts []worker.MessageOption
		key  *dkim.Key
	}{
		{"stable-boundaries", nil, nil},
		{"text-part", []worker.MessageOption{worker.WithTextPart()}, nil},
		// The worker's way: the emails of a batch share their HTML.
		{"text-part-kept", []worker.MessageOption{worker.WithTextParts(&worker.TextParts{})}, nil},
		{"text-part+dkim-rsa2048", []worker.MessageOption{worker.WithTextPart()}, rsaKey},
		{"text-part+dkim-ed25519", []worker.MessageOption{worker.WithTextPart()}, edKey},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var s *dkim.Signer
			if bc.key != nil {
				s = dkim.NewSigner([]*dkim.Key{bc.key}, nil)
			}
			b.ReportAllocs()
			cpu := dkimtest.CPUTime()
			for b.Loop() {
				raw, err := worker.RenderMessage(e, bc.opts...)
				if err != nil {
					b.Fatal(err)
				}
				if s != nil {
					if _, err := s.Sign(raw, "sales-bot@contoso.example", ""); err != nil {
						b.Fatal(err)
					}
				}
			}
			dkimtest.ReportCPU(b, cpu)
		})
	}
}

// BenchmarkPoolCheckout measures taking an idle connection from the pool
// and putting it back (no SMTP traffic once the connections are open).
func BenchmarkPoolCheckout(b *testing.B) {
	srv := smtptest.Start(b)
	relay, err := worker.ParseRelay("smtp://" + srv.Addr + "?tls=none")
	if err != nil {
		b.Fatal(err)
	}
	newPool := func(b *testing.B, size int) *worker.Pool {
		reg := prometheus.NewRegistry()
		p, err := worker.NewPool(relay, worker.PoolConfig{Size: size}, metrics.New(reg, reg))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(p.Close)
		// Open the connections before timing.
		conns := make([]*worker.Conn, size)
		for i := range conns {
			if conns[i], err = p.Get(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
		for _, c := range conns {
			p.Put(c, false)
		}
		return p
	}

	b.Run("serial", func(b *testing.B) {
		p := newPool(b, 1)
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			c, err := p.Get(ctx)
			if err != nil {
				b.Fatal(err)
			}
			p.Put(c, false)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		p := newPool(b, 4)
		ctx := context.Background()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c, err := p.Get(ctx)
				if err != nil {
					b.Error(err)
					return
				}
				p.Put(c, false)
			}
		})
	})
}
