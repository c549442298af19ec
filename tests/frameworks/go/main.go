// The deals API as a Go 1.19 net/http service would write it: encoding/json decoding into structs, whose field
// names match JSON keys case-insensitively (Unicode simple folding: "ſtage" is "stage").
// Answers {"app":"go","handler":...,"stages":[...]}: what it would store. Used by tests/test_differential.py.
package main

import (
	"encoding/json"
	"net/http"
	"os"
	"strings"
)

type deal struct {
	Stage *string `json:"stage"`
}

type batch struct {
	Deals []deal `json:"deals"`
}

func answer(w http.ResponseWriter, handler string, stages []string) {
	w.Header().Set("Content-Type", "application/json")
	if stages == nil {
		stages = []string{}
	}
	json.NewEncoder(w).Encode(map[string]interface{}{"app": "go", "handler": handler, "stages": stages})
}

func stagesOf(deals ...deal) []string {
	out := []string{}
	for _, d := range deals {
		if d.Stage != nil {
			out = append(out, *d.Stage)
		}
	}
	return out
}

func create(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.NotFound(w, r)
		return
	}
	var d deal
	if err := json.NewDecoder(r.Body).Decode(&d); err != nil {
		http.Error(w, "bad json", http.StatusBadRequest)
		return
	}
	answer(w, "create", stagesOf(d))
}

func byID(w http.ResponseWriter, r *http.Request) {
	rest := strings.TrimPrefix(r.URL.Path, "/api/v1/deals/")
	if rest == "import" && r.Method == http.MethodPost {
		var b batch
		if err := json.NewDecoder(r.Body).Decode(&b); err != nil {
			http.Error(w, "bad json", http.StatusBadRequest)
			return
		}
		answer(w, "import", stagesOf(b.Deals...))
		return
	}
	if rest == "" || strings.Contains(rest, "/") || (r.Method != http.MethodPatch && r.Method != http.MethodPut) {
		http.NotFound(w, r)
		return
	}
	var d deal
	if err := json.NewDecoder(r.Body).Decode(&d); err != nil {
		http.Error(w, "bad json", http.StatusBadRequest)
		return
	}
	answer(w, "update", stagesOf(d))
}

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/deals", create)
	mux.HandleFunc("/api/v1/deals/", byID)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/" {
			w.Write([]byte("ok"))
			return
		}
		http.NotFound(w, r)
	})
	http.ListenAndServe("127.0.0.1:"+os.Args[1], mux)
}
