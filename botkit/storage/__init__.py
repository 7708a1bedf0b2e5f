"""Storage: the store's role interfaces (``base``), the rows every engine writes the same way
(``rows``), and the SQLite engine with its writer thread and schema. Storage stores: it is
handed rows and rules, and decides nothing about conversations."""
