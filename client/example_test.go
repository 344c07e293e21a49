package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/sendq/sendq/client"
)

// The examples talk to a real sendq that the tests start at sendqURL,
// accepting apiKey.

func ExampleClient_Send() {
	c, err := client.New(sendqURL, apiKey)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	acc, err := c.Send(context.Background(), client.Email{
		From:       "Reports <reports@example.com>",
		To:         "alice@example.org;bob@example.org",
		Subject:    "Monthly report",
		Body:       "<p>The report is attached.</p>",
		Importance: client.ImportanceHigh,
		Attachments: []client.Attachment{
			{ContentData: []byte("month,total\nMay,42\n"), ContentType: "text/csv", FileName: "report.csv"},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(acc.Status)
	// Output: queued
}

func ExampleClient_Wait() {
	c, err := client.New(sendqURL, apiKey)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	acc, err := c.Send(ctx, client.Email{
		From: "noreply@example.com", To: "alice@example.org", CC: "bob@example.org",
		Subject: "Your order shipped", Body: "It is on its way.", IsHtml: client.Bool(false),
	}, client.IdempotencyKey("order-1234-shipped"))
	if err != nil {
		log.Fatal(err)
	}
	st, err := c.Wait(ctx, acc.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(st.Status, st.Attempts)
	for _, r := range st.Recipients {
		fmt.Println(r.Kind, r.Address, r.Status, r.Code)
	}
	// Output:
	// sent 1
	// to alice@example.org sent 250
	// cc bob@example.org sent 250
}

func ExampleClient_Cancel() {
	c, err := client.New(sendqURL, apiKey)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	acc, err := c.Send(ctx, client.Email{
		From: "noreply@example.com", To: "alice@example.org", Subject: "Reminder",
		SendAt: time.Now().Add(24 * time.Hour),
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(acc.Status)
	st, err := c.Cancel(ctx, acc.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(st.Status)
	// Output:
	// scheduled
	// canceled
}

func ExampleAPIError() {
	c, err := client.New(sendqURL, apiKey)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	_, err = c.Send(context.Background(), client.Email{From: "noreply@example.com", To: "alice@", Subject: "Hi"})
	var ae *client.APIError
	if errors.As(err, &ae) {
		fmt.Println(ae.Status, ae.Code, ae.Field)
	}
	// Output: 400 invalid_field To
}
