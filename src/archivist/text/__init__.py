"""Text shared by indexing, search and answers: sentences, prose rendering, the term analyzer."""
