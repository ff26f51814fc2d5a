// Command mixtext writes the mixed calibration text of testdata
// (testdata/text/mixed/gutenberg_tinystories.txt): the paragraphs of a
// Gutenberg book and the stories of a TinyStories file interleaved in
// proportion, so that the first chunks of it hold both kinds of text as the
// whole does.
//
//	go run ./scripts/mixtext > testdata/text/mixed/gutenberg_tinystories.txt
package main

import (
	"bufio"
	"flag"
	"log"
	"os"
	"strings"
)

func main() {
	book := flag.String("book", "testdata/text/gutenberg/pg1342.txt", "Gutenberg book (paragraphs separated by blank lines, CRLF)")
	stories := flag.String("stories", "testdata/text/tinystories/tinystories_val_first100.txt", "TinyStories file (stories separated by <|endoftext|>)")
	flag.Parse()
	b, err := os.ReadFile(*book)
	if err != nil {
		log.Fatal(err)
	}
	s, err := os.ReadFile(*stories)
	if err != nil {
		log.Fatal(err)
	}
	paras := strings.Split(string(b), "\r\n\r\n")
	var tales []string
	for _, t := range strings.Split(string(s), "<|endoftext|>") {
		if strings.TrimSpace(t) != "" {
			tales = append(tales, strings.Trim(t, "\n"))
		}
	}
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	i, j := 0, 0
	for i < len(tales) || j < len(paras) {
		// The book's next paragraph while it is no further along than the
		// stories, in proportion.
		if j < len(paras) && (i >= len(tales) || j*len(tales) <= i*len(paras)) {
			w.WriteString(strings.ReplaceAll(paras[j], "\r\n", "\n") + "\n\n")
			j++
		} else {
			w.WriteString(tales[i] + "\n<|endoftext|>\n")
			i++
		}
	}
}
