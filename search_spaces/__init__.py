# search spaces shipped with autotune (mapped to the package autotune.search_spaces)
