package ui_test

import (
	"log"
	"net/http"

	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/ui"
	"github.com/sendq/sendq/producer"
)

// The console behind the API keys, read-only, on the API's mux. An
// operator opens http://HOST/ui/?key=KEY once; the cookie does the rest.
func ExampleNew() {
	rdb := redis.NewClient(&redis.Options{Addr: "redis:6379"})
	defer rdb.Close()

	keys, err := producer.ParseAPIKeys("key-one-secret,key-two-secret")
	if err != nil {
		log.Fatal(err)
	}
	h, err := ui.New(rdb, ui.Options{CheckKey: producer.KeyChecker(keys)})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(ui.Path, h) // "/ui/": the console, its assets and its API
}
