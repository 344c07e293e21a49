package events_test

import (
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/sendq/sendq/events"
)

func TestParseSecrets(t *testing.T) {
	t.Parallel()
	good := "whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef01234567"))
	short := "whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456"))
	for _, tc := range []struct {
		in      string
		n       int
		wantErr string
	}{
		{in: good, n: 1},
		{in: "  " + good + "   " + good + " ", n: 2},
		{in: "", wantErr: "no secret"},
		{in: strings.TrimPrefix(good, "whsec_"), wantErr: "does not start with whsec_"},
		{in: good + " nope", wantErr: "secret 2 of 2 does not start with whsec_"},
		{in: "whsec_!!notbase64!!", wantErr: "not whsec_ followed by standard base64"},
		{in: short, wantErr: "holds 23 bytes; at least 24"},
	} {
		s, err := events.ParseSecrets(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseSecrets(%q) error = %v; want one saying %q", tc.in, err, tc.wantErr)
			}
			for _, f := range strings.Fields(tc.in) {
				if len(f) > 8 && err != nil && strings.Contains(err.Error(), f[6:]) {
					t.Errorf("ParseSecrets error %q shows the secret", err)
				}
			}
			continue
		}
		if err != nil || s.Len() != tc.n {
			t.Errorf("ParseSecrets(%q) = %d keys, %v; want %d", tc.in, s.Len(), err, tc.n)
		}
	}
}

func TestParseEndpoints(t *testing.T) {
	t.Parallel()
	eps, err := events.ParseEndpoints(" https://hooks.example.com/sendq?token=abc , http://127.0.0.1:9000/x,")
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 2 || eps[0].URL != "https://hooks.example.com/sendq?token=abc" || eps[0].Host != "https://hooks.example.com" ||
		eps[1].Host != "http://127.0.0.1:9000" || eps[0].Key == eps[1].Key || len(eps[0].Key) != 16 {
		t.Errorf("ParseEndpoints = %+v", eps)
	}
	for _, tc := range []struct{ in, want string }{
		{"ftp://x.example/", "entry 1 is not an absolute http"},
		{"https://a.example/,/relative", "entry 2 is not an absolute"},
		{"https://a.example/#frag", "fragment"},
		{"https://a.example/x,https://a.example/x", "entry 2 repeats"},
		{"https://a.example/?token=s3cret,:://", "entry 2"},
	} {
		_, err := events.ParseEndpoints(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("ParseEndpoints(%q) error = %v; want one saying %q, without the URL", tc.in, err, tc.want)
		}
	}
}

// The signature is the one the Standard Webhooks library computes and
// verifies, with each secret of a rotation; a third secret does not verify.
func TestSignVerifiesWithStandardWebhooks(t *testing.T) {
	t.Parallel()
	a, b, other := newSecret(t), newSecret(t), newSecret(t)
	secrets, err := events.ParseSecrets(a + " " + b)
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"type":"email.sent","timestamp":"2026-01-02T15:04:05Z","data":{"email_id":"x","recipient":"a@example.com","status":"sent","attempt":1,"sequence":1}}`)
	ts := time.Now()
	sig := secrets.Sign("evt_1", ts, body)
	if parts := strings.Split(sig, " "); len(parts) != 2 || !strings.HasPrefix(parts[0], "v1,") || !strings.HasPrefix(parts[1], "v1,") {
		t.Fatalf("Sign = %q; want two v1 signatures", sig)
	}
	h := http.Header{}
	h.Set(standardwebhooks.HeaderWebhookID, "evt_1")
	h.Set(standardwebhooks.HeaderWebhookTimestamp, strconv.FormatInt(ts.Unix(), 10))
	h.Set(standardwebhooks.HeaderWebhookSignature, sig)
	for i, s := range []string{a, b} {
		wh, err := standardwebhooks.NewWebhook(s)
		if err != nil {
			t.Fatal(err)
		}
		if err := wh.Verify(body, h); err != nil {
			t.Errorf("secret %d: Verify = %v", i+1, err)
		}
		want, _ := wh.Sign("evt_1", ts, body)
		if !strings.Contains(sig, want) {
			t.Errorf("secret %d: library signs %q; sendq's header %q lacks it", i+1, want, sig)
		}
		if err := wh.Verify(append(body, ' '), h); err == nil {
			t.Errorf("secret %d: Verify of an altered body passed", i+1)
		}
	}
	wh, _ := standardwebhooks.NewWebhook(other)
	if err := wh.Verify(body, h); err == nil {
		t.Error("Verify with a secret sendq does not have passed")
	}
}

func TestRetryDelayScalesTheLadder(t *testing.T) {
	t.Parallel()
	for _, base := range []time.Duration{5 * time.Second, 100 * time.Millisecond, 10 * time.Millisecond} {
		for n := range len(events.Ladder) + 2 {
			step := events.Ladder[min(n, len(events.Ladder)-1)]
			want := time.Duration(float64(step) * float64(base) / float64(5*time.Second))
			for range 20 {
				got := events.RetryDelay(base, n)
				if got < want*9/10-1 || got > want*11/10+1 {
					t.Fatalf("RetryDelay(%s, %d) = %s; want %s ±10%%", base, n, got, want)
				}
			}
		}
	}
	if got := events.Ladder; len(got) != 9 || got[0] != 5*time.Second || got[8] != 24*time.Hour {
		t.Errorf("Ladder = %v; want the 9 steps 5s ... 24h", got)
	}
}
