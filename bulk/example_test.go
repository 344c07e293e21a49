package bulk_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/sendq/sendq/bulk"
	"github.com/sendq/sendq/client"
)

// Send a CSV file of rows with a stored template, as `sendq send` does.
// Running it again after an interruption sends only what is missing.
func ExampleRun() {
	c, err := client.New("http://127.0.0.1:8080", os.Getenv("SENDQ_API_KEY"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	sum, err := bulk.Run(context.Background(), bulk.Config{
		Client:   c,
		File:     "rows.csv", // To,FirstName,OrderNo
		Template: "order-shipped",
		From:     "Shop <shop@example.com>",
		Rejects:  "rejects.csv",
		Progress: os.Stderr,
	})
	if err != nil {
		log.Fatal(err) // the file or the template: nothing was sent
	}
	fmt.Printf("%d rows: %d accepted, %d rejected, %d not sent\n", sum.Rows, sum.Accepted, sum.Rejected, sum.NotSent)
	if sum.Err != nil {
		log.Printf("stopped: %v (run it again to send the rest)", sum.Err)
	}
}
