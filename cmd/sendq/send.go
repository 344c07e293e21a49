package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/mattn/go-isatty"

	"github.com/sendq/sendq/bulk"
	"github.com/sendq/sendq/client"
)

const sendUsage = `Usage: sendq send -template NAME -file rows.csv [flags]
       sendq send -file items.jsonl [flags]

Sends every row of a file through POST /v1/emails/batch, several batches at
a time, with a progress bar. A CSV file has a header line: the To column is
the recipient, CC, Bcc and From are optional, every other column is a
TemplateData key. A .jsonl file has one batch item per line.

Safe to re-run: each batch's Idempotency-Key derives from the file's
content, the options and the batch's position, so running the same command
again after an interruption queues nothing twice and sends the rest.

Exit status: 0 when every row was accepted, 1 when a row was rejected or not
sent, 2 for bad flags or a bad file (nothing sent).

Flags:
`

// sendOptions is what `sendq send` was asked to do.
type sendOptions struct {
	bulk    bulk.Config // without its Client and Progress
	target  string
	apiKey  string
	retries int
}

// parseSend reads the flags of `sendq send` and their environment twins
// (SENDQ_TARGET, SENDQ_API_KEY, else the first of SENDQ_API_KEYS).
func parseSend(args []string, getenv func(string) string, stderr io.Writer) (*sendOptions, error) {
	o := &sendOptions{}
	fs := flag.NewFlagSet("sendq send", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, sendUsage)
		fs.PrintDefaults()
	}
	target := getenv("SENDQ_TARGET")
	if target == "" {
		target = "http://127.0.0.1:8080"
	}
	b := &o.bulk
	fs.StringVar(&b.File, "file", "", "the rows: a CSV file with a header, or one batch item per line in a .jsonl file (required)")
	fs.StringVar(&b.Template, "template", "", "the template of every row (required for a CSV file)")
	fs.IntVar(&b.TemplateVersion, "template-version", 0, "pin this version of the template; 0: the current one")
	fs.StringVar(&b.From, "from", "", "the sender of every row without a From; empty: the server's SENDQ_DEFAULT_FROM")
	fs.StringVar(&b.Priority, "priority", "", "high, normal or bulk; empty: bulk, as for any batch")
	fs.IntVar(&b.BatchSize, "batch", 500, "rows per batch (at most the server's SENDQ_MAX_BATCH)")
	fs.IntVar(&b.Parallel, "parallel", 4, "batches in flight")
	fs.StringVar(&b.Rejects, "rejects", "", "write each rejected row (line, field, code, message) to this CSV file")
	fs.StringVar(&b.Run, "run", "", "a label mixed into the Idempotency-Keys: give a new one to send the same file again on purpose")
	fs.StringVar(&o.target, "target", target, "base URL of the sendq (env SENDQ_TARGET)")
	// The key's default is applied after parsing: -h must not print it.
	fs.StringVar(&o.apiKey, "api-key", "", "API key (env SENDQ_API_KEY, else the first of SENDQ_API_KEYS)")
	fs.DurationVar(&b.ProgressEvery, "progress-interval", 2*time.Second, "how often a progress line is written when stderr is not a terminal")
	fs.IntVar(&o.retries, "retries", 10, "tries again of a batch after a lost answer, 502, 503 or 504, with the same key")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.apiKey == "" {
		o.apiKey = getenv("SENDQ_API_KEY")
	}
	if o.apiKey == "" {
		first, _, _ := strings.Cut(getenv("SENDQ_API_KEYS"), ",")
		o.apiKey, _, _ = strings.Cut(strings.TrimSpace(first), ":")
	}
	var errs []string
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
	}
	if b.File == "" {
		errs = append(errs, "-file is required")
	} else if b.Template == "" && bulk.FormatOf(b.File) == bulk.FormatCSV {
		errs = append(errs, "-template is required for a CSV file (its columns are the template's data)")
	}
	if b.BatchSize < 1 || b.Parallel < 1 || o.retries < 0 || b.TemplateVersion < 0 {
		errs = append(errs, "-batch and -parallel must be at least 1, -retries and -template-version at least 0")
	}
	switch b.Priority {
	case "", "high", "normal", "bulk":
	default:
		errs = append(errs, fmt.Sprintf("-priority %q: want high, normal or bulk", b.Priority))
	}
	if u, err := url.Parse(o.target); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Sprintf("-target %q is not an http(s) URL", o.target))
	}
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "; "))
	}
	return o, nil
}

// sendMain runs `sendq send`: the summary goes to stdout, the progress
// (a bar on a terminal) and errors to stderr.
func sendMain(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	o, err := parseSend(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "sendq send: %v\n", err)
		return 2
	}
	c, err := client.New(o.target, o.apiKey, client.WithRetries(o.retries), client.WithBackoff(250*time.Millisecond, 10*time.Second))
	if err != nil {
		fmt.Fprintf(stderr, "sendq send: %v\n", err)
		return 2
	}
	defer c.Close()
	cfg := o.bulk
	cfg.Client, cfg.Progress = c, stderr
	if f, ok := stderr.(*os.File); ok {
		cfg.Terminal = isatty.IsTerminal(f.Fd())
	}
	sum, err := bulk.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "sendq send: %v\n", err)
		return 2
	}
	printSummary(stdout, stderr, sum, cfg.Rejects)
	if !sum.OK() {
		return 1
	}
	return 0
}

func printSummary(stdout, stderr io.Writer, s *bulk.Summary, rejects string) {
	for _, r := range s.FirstRejects {
		fmt.Fprintf(stderr, "sendq send: line %d: rejected: %s (%s): %s\n", r.Line, r.Field, r.Code, r.Message)
	}
	if more := s.Rejected - len(s.FirstRejects); more > 0 {
		fmt.Fprintf(stderr, "sendq send: and %d more rejected rows\n", more)
	}
	rate := 0.0
	if sec := s.Elapsed.Seconds(); sec > 0 {
		rate = float64(s.Accepted+s.Rejected) / sec
	}
	fmt.Fprintf(stdout, "rows      %d\naccepted  %d\nrejected  %d", s.Rows, s.Accepted, s.Rejected)
	if rejects != "" && s.Rejected > 0 {
		fmt.Fprintf(stdout, " (in %s)", rejects)
	}
	fmt.Fprintf(stdout, "\nnot sent  %d\ntime      %s (%.0f rows/s)", s.NotSent, s.Elapsed.Round(time.Millisecond), rate)
	if rss := peakRSS(); rss > 0 {
		fmt.Fprintf(stdout, ", peak RSS %.1f MiB", float64(rss)/(1<<20))
	}
	fmt.Fprintln(stdout)
	if s.Err != nil {
		fmt.Fprintf(stderr, "sendq send: stopped: %v\nsendq send: run the same command again to send the rest (nothing is queued twice)\n", s.Err)
	}
}
