-- Each volume's quota as the user set it (NULL for none).

ALTER TABLE volumes ADD COLUMN max_bytes INTEGER CHECK (max_bytes >= 0);
ALTER TABLE volumes ADD COLUMN max_files INTEGER CHECK (max_files >= 0);
